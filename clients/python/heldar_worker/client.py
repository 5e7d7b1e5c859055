"""The worker contract over HTTP: leases, frames with tickets, and posts that are retried safely.

Everything here is one request to the daemon (``Client``) or the loop every worker needs around
those requests (``run``). The rules the loop keeps are the contract's: renew the lease and follow
the task set it returns, skip a frame already analysed or too old, post with the frame's ticket
and an idempotent frame id, repeat a 5xx with the same body, lease again at once when a ticket
is refused, and keep a few posts in flight so the next frame is analysed while the last one is
made durable.

Frames come as JPEG, or raw (``rgb`` or ``gray``) for workers on the box: raw pixels skip the
JPEG encode in the daemon and the decode in the worker, and cost least over the API's Unix socket
(``Client(socket="/run/heldar/api.sock")``, the daemon's ``http.socket``).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import httpx

log = logging.getLogger("heldar_worker")

USER_AGENT = "heldar-worker-python/1.0"


class HeldarError(Exception):
    """Something the daemon, or the way to it, did not do."""


class Unreachable(HeldarError):
    """No answer at all: the daemon is down, restarting, or the address is wrong."""


class Refused(HeldarError):
    """The daemon answered with a 4xx. Sending the same request again would be refused again."""

    def __init__(self, status: int, error: str):
        super().__init__(f"the daemon answered {status}: {error}")
        self.status = status
        self.error = error


class TicketRefused(Refused):
    """The frame's ticket expired or no longer matches a lease: lease again, then fetch anew."""


class GaveUp(HeldarError):
    """A post still failed with a 5xx or no connection after every retry."""


@dataclass(frozen=True)
class Task:
    """One kind of analysis on one camera stream, as a lease answer lists it."""

    id: str
    camera_id: str
    task_type: str
    frame_url: str
    stream_profile: str = "sub"
    fps: float = 5.0
    width: Optional[int] = None
    #: Opaque to the daemon: the task's own settings, for the worker to read.
    config: dict = field(default_factory=dict, hash=False)

    @classmethod
    def from_json(cls, t: dict) -> "Task":
        return cls(
            id=t["id"],
            camera_id=t["camera_id"],
            task_type=t["task_type"],
            frame_url=t["frame_url"],
            stream_profile=t.get("stream_profile", "sub"),
            fps=float(t.get("fps") or 5.0),
            width=t.get("width"),
            config=t.get("config") or {},
        )


@dataclass(frozen=True)
class Lease:
    """The complete set of tasks this worker holds now."""

    lease_id: str
    worker_id: str
    expires_at: str
    tasks: tuple

    @classmethod
    def from_json(cls, answer: dict) -> "Lease":
        return cls(
            lease_id=answer["lease_id"],
            worker_id=answer.get("worker_id", ""),
            expires_at=answer.get("expires_at", ""),
            tasks=tuple(Task.from_json(t) for t in answer.get("tasks", [])),
        )


FORMATS = ("jpeg", "rgb", "gray")


@dataclass(frozen=True)
class Frame:
    """A sampled frame and what the daemon said about it."""

    #: ``x-frame-captured-at`` verbatim: it changes exactly when the frame does, and it is the
    #: batch's timestamp and the second half of its frame id.
    captured_at: str
    age_ms: int
    #: Present when this worker holds a live lease on the task.
    ticket: Optional[str]
    #: ``jpeg``, ``rgb24`` (packed R, G, B) or ``gray8``, as the daemon's ``x-frame-format`` says.
    format: str
    data: bytes
    width: int = 0
    height: int = 0
    #: Bytes per row of a raw frame.
    stride: int = 0

    @property
    def jpeg(self) -> bytes:
        if self.format != "jpeg":
            raise ValueError(f"this frame is {self.format}, not JPEG: use array()")
        return self.data

    def array(self):
        """The pixels as a numpy array over the received bytes, without a copy (read-only):
        ``(height, width, 3)`` RGB for ``rgb24``, ``(height, width)`` for ``gray8``."""
        import numpy as np

        if self.format == "rgb24":
            shape, strides = (self.height, self.width, 3), (self.stride, 3, 1)
        elif self.format == "gray8":
            shape, strides = (self.height, self.width), (self.stride, 1)
        else:
            raise ValueError(f"a {self.format} frame has no raw pixels: decode frame.jpeg")
        return np.ndarray(shape, dtype=np.uint8, buffer=self.data, strides=strides)


@dataclass
class Detection:
    """One thing seen in a frame. ``bbox`` is ``(x, y, w, h)`` normalised to 0..1 from the
    top-left corner; ``track_id`` is what lets zones follow one object from frame to frame."""

    label: str
    confidence: float
    bbox: Sequence[float]
    track_id: Optional[str] = None
    attributes: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "label": self.label,
            "confidence": float(self.confidence),
            "bbox": [float(v) for v in self.bbox],
        }
        if self.track_id is not None:
            d["track_id"] = str(self.track_id)
        if self.attributes:
            d["attributes"] = self.attributes
        return d


@dataclass(frozen=True)
class Stored:
    """A batch durable on the box; ``duplicate`` when it already was (a repeated frame id)."""

    detections: int
    duplicate: bool


def _frame_id(task: Task, frame: Frame) -> str:
    """``{task_id}:{captured_at}``: the same frame posted twice is stored once. (With a ticket
    the daemon derives the stored id from the ticket instead, which is just as stable.)"""
    return f"{task.id}:{frame.captured_at}"


def _error_of(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text[:200]))
    except ValueError:
        return response.text[:200]


def _refusal(response: httpx.Response) -> Refused:
    error = _error_of(response)
    if response.status_code == 409 or (
        response.status_code == 401 and "frame_ticket" in error
    ):
        return TicketRefused(response.status_code, error)
    return Refused(response.status_code, error)


class Client:
    """Talks to the daemon's worker routes with one worker credential.

    ``api`` is the daemon's HTTP base URL; ``token`` a worker token (``heldar token create --role
    worker``), or ``None`` on a box with ``http.auth = false``. With ``socket``, the path of the
    daemon's ``http.socket``, every request goes over that Unix socket instead (``api`` is then
    only a name). One ``Client`` may be shared by threads: each thread gets its own connection.
    """

    def __init__(
        self,
        api: str = "http://127.0.0.1:8000",
        token: Optional[str] = None,
        timeout: float = 10.0,
        socket: Optional[str] = None,
    ):
        self.api = api.rstrip("/")
        self.socket = socket
        self.timeout = timeout
        self._headers = {"User-Agent": USER_AGENT}
        if token:
            self._headers["X-API-Key"] = token
        self._local = threading.local()
        self._opened: list = []
        self._opened_lock = threading.Lock()

    def close(self) -> None:
        """Closes the connections of every thread that used this client."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for c in opened:
            c.close()
        self._local = threading.local()

    def close_thread(self) -> None:
        """Closes the calling thread's connection: a thread that is done with the client (a
        task that stopped) should not keep a socket open for the worker's life."""
        c = getattr(self._local, "http", None)
        if c is not None:
            self._local.http = None
            with self._opened_lock:
                self._opened = [o for o in self._opened if o is not c]
            c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _where(self) -> str:
        return f"unix socket {self.socket}" if self.socket else self.api

    def _http(self) -> httpx.Client:
        # One client per thread: a task's frames and posts reuse one connection, and no
        # connection pool is shared between threads.
        c = getattr(self._local, "http", None)
        if c is None:
            transport = httpx.HTTPTransport(uds=self.socket) if self.socket else None
            c = self._local.http = httpx.Client(
                base_url=self.api, headers=self._headers, timeout=self.timeout,
                transport=transport,
            )
            with self._opened_lock:
                self._opened.append(c)
        return c

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http().request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise Unreachable(f"cannot reach the daemon at {self._where}: {e}") from e

    def lease(
        self,
        worker_id: str,
        task_types: Optional[Iterable[str]] = None,
        ttl_secs: int = 60,
        max_tasks: Optional[int] = None,
    ) -> Lease:
        """Acquires and renews (this is the worker's heartbeat): the answer is the whole set of
        tasks this worker holds now. An empty set is normal."""
        body: dict[str, Any] = {"worker_id": worker_id, "ttl_secs": ttl_secs}
        if task_types is not None:
            body["task_types"] = list(task_types)
        if max_tasks is not None:
            body["max_tasks"] = max_tasks
        r = self._request("POST", "/api/v1/ai/leases", json=body)
        if r.status_code != 200:
            raise _refusal(r)
        return Lease.from_json(r.json())

    def release(self, lease_id: str) -> int:
        """Gives the lease's tasks back at once; idempotent. Returns how many were released."""
        r = self._request("DELETE", f"/api/v1/ai/leases/{lease_id}")
        if r.status_code != 200:
            raise _refusal(r)
        return int(r.json().get("released", 0))

    def tasks(self, worker_id: Optional[str] = None) -> list:
        """Every offered task (legacy discovery; ``lease`` is how a worker claims its share)."""
        params = {"worker_id": worker_id} if worker_id else None
        r = self._request("GET", "/api/v1/ai/tasks", params=params)
        if r.status_code != 200:
            raise _refusal(r)
        return [Task.from_json(t) for t in r.json()]

    def frame(self, task: Task, format: str = "jpeg") -> Optional[Frame]:
        """The task's latest frame, or ``None`` while none has been sampled yet. ``format`` is
        ``jpeg``, ``rgb`` or ``gray``; the raw ones come at the task's size, ready for
        ``Frame.array()``."""
        url = task.frame_url
        # The URL comes from the daemon, but the token should go nowhere but its frame route.
        if not url.startswith("/") or "://" in url or ".." in url:
            raise HeldarError(
                f"task {task.id} has a frame URL that is not a plain relative path"
            )
        if format not in FORMATS:
            raise ValueError(f"format {format!r} must be one of {', '.join(FORMATS)}")
        if format != "jpeg":
            url += ("&" if "?" in url else "?") + f"format={format}"
        r = self._request("GET", url)
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise _refusal(r)
        captured = r.headers.get("x-frame-captured-at")
        if not captured:
            raise HeldarError("a frame without x-frame-captured-at")
        try:
            age_ms = int(r.headers.get("x-frame-age-ms", ""))
        except ValueError:
            age_ms = 1 << 62
        def header(name):
            try:
                return int(r.headers.get(name, "0"))
            except ValueError:
                raise HeldarError(f"a frame with a malformed {name} header") from None

        got = r.headers.get("x-frame-format", "jpeg")
        wanted = {"jpeg": "jpeg", "rgb": "rgb24", "gray": "gray8"}[format]
        if got != wanted:
            # A daemon without raw frames ignores format= and sends a JPEG.
            raise HeldarError(f"asked for {wanted} frames, got {got}: "
                              "this daemon may not offer raw frames")
        return Frame(
            captured_at=captured,
            age_ms=age_ms,
            ticket=r.headers.get("x-frame-ticket"),
            format=r.headers.get("x-frame-format", "jpeg"),
            data=r.content,
            width=header("x-frame-width"),
            height=header("x-frame-height"),
            stride=header("x-frame-stride"),
        )

    def post(
        self,
        task: Task,
        frame: Frame,
        detections: Iterable[Detection],
        event: Optional[dict] = None,
        retries: int = 5,
        stop: Optional[threading.Event] = None,
    ) -> Stored:
        """Posts what was seen in ``frame``, with its ticket and frame id.

        Answers only once the batch is durable on the box. A 5xx or a lost connection is
        repeated with the same body (the daemon stores a frame id once), backing off from 0.5 s,
        up to ``retries`` attempts, and not once ``stop`` is set; then ``GaveUp``. A 4xx raises
        ``Refused``, or ``TicketRefused`` for a ticket to lease again for.
        """
        body: dict[str, Any] = {
            "camera_id": task.camera_id,
            "task_type": task.task_type,
            "timestamp": frame.captured_at,
            "frame_id": _frame_id(task, frame),
            "detections": [d.to_json() for d in detections],
        }
        if frame.ticket:
            body["frame_ticket"] = frame.ticket
        if event is not None:
            body["event"] = event
        return self.post_batch(body, retries=retries, stop=stop)

    def post_batch(
        self, body: dict, retries: int = 5, stop: Optional[threading.Event] = None
    ) -> Stored:
        """``post`` for a body built by hand (the contract's ``POST /api/v1/ai/events``)."""
        backoff = 0.5
        last = "no attempt"
        for attempt in range(max(1, retries)):
            if attempt:
                if stop is not None and stop.wait(backoff):
                    break
                if stop is None:
                    time.sleep(backoff)
                backoff = min(backoff * 2, 15.0)
            try:
                r = self._request("POST", "/api/v1/ai/events", json=body)
            except Unreachable as e:
                last = str(e)
                log.warning("cannot post; retrying the same batch: %s", e)
                continue
            if r.status_code == 200:
                answer = r.json()
                return Stored(
                    detections=int(answer.get("detections_ingested", 0)),
                    duplicate=bool(answer.get("duplicate", False)),
                )
            if r.status_code >= 500:
                last = f"{r.status_code}: {_error_of(r)}"
                log.warning("ingest failed (%s); retrying the same batch", last)
                continue
            raise _refusal(r)
        raise GaveUp(f"batch {body.get('frame_id')} not stored: {last}")


Analyze = Callable[[Task, Frame], Optional[Iterable[Detection]]]


def run(
    analyze: Analyze,
    *,
    api: str = "http://127.0.0.1:8000",
    token: Optional[str] = None,
    worker_id: str,
    task_types: Sequence[str],
    renew_every: float = 5.0,
    ttl_secs: int = 60,
    stop: Optional[threading.Event] = None,
    client: Optional[Client] = None,
    frames: str = "jpeg",
    socket: Optional[str] = None,
    posts_in_flight: int = 8,
) -> None:
    """Leases, and calls ``analyze(task, frame)`` on each leased task's new frames at the
    task's fps, one thread per task, until ``stop`` is set (or SIGTERM/SIGINT when called from
    the main thread); then releases the lease. ``frames`` is the format ``analyze`` gets
    (``jpeg``, ``rgb`` or ``gray``); ``socket`` the daemon's ``http.socket``, to talk over it.

    ``analyze`` returns the detections to post; nothing is posted for an empty result (zones
    end a track that stops being reported on their own timeout). Calls for one task come from
    that task's thread, one at a time, so per-task state keyed by ``task.id`` needs no lock.

    Up to ``posts_in_flight`` of a task's posts wait for their answers at once. The daemon
    answers a post once it is durable, after its ``database.commit_linger`` on a box tuned for
    flash; a task that waited for each answer would analyse one frame per linger. At least the
    task's fps times the linger, plus one, keeps a task at its fps.
    """
    if frames not in FORMATS:
        raise ValueError(f"frames {frames!r} must be one of {', '.join(FORMATS)}")
    own_client = client is None
    client = client or Client(api, token, socket=socket)
    stop = stop or threading.Event()
    supervisor = _Supervisor(
        client, analyze, worker_id, list(task_types), ttl_secs, stop, frames, posts_in_flight
    )
    if threading.current_thread() is threading.main_thread():

        def on_signal(*_):
            stop.set()
            supervisor.lease_now.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    try:
        while not stop.is_set():
            supervisor.renew()
            supervisor.lease_now.wait(renew_every)
            supervisor.lease_now.clear()
    finally:
        supervisor.shutdown()
        if own_client:
            client.close()


class _Supervisor:
    """Holds the lease and one runner thread per leased task."""

    def __init__(
        self, client, analyze, worker_id, task_types, ttl_secs, stop, frames, posts_in_flight
    ):
        self.client, self.analyze, self.frames = client, analyze, frames
        self.posts_in_flight = posts_in_flight
        self.worker_id, self.task_types, self.ttl_secs = worker_id, task_types, ttl_secs
        self.stop = stop
        self.lease_now = threading.Event()
        self.lease_id: Optional[str] = None
        self.runners: dict[str, tuple[Task, threading.Event, threading.Thread]] = {}

    def renew(self) -> None:
        try:
            lease = self.client.lease(self.worker_id, self.task_types, self.ttl_secs)
        except HeldarError as e:
            log.warning("lease failed: %s", e)
            return
        self.lease_id = lease.lease_id
        wanted = {t.id: t for t in lease.tasks if t.task_type in self.task_types}
        self._stop_runners([i for i, (t, _, _) in self.runners.items() if wanted.get(i) != t])
        for task_id, task in wanted.items():
            if task_id not in self.runners:
                task_stop = threading.Event()
                thread = threading.Thread(
                    target=self._run_task, args=(task, task_stop), daemon=True,
                    name=f"task {task_id}",
                )
                self.runners[task_id] = (task, task_stop, thread)
                thread.start()
                log.info("started task %s at %s fps", task_id, task.fps)

    def _stop_runners(self, task_ids: list) -> None:
        """Tells every runner to stop, then waits for them: one runner's last post does not
        hold up the others' stop."""
        stopping = [(task_id, self.runners.pop(task_id)) for task_id in task_ids]
        for _, (_, task_stop, _) in stopping:
            task_stop.set()
        for task_id, (_, _, thread) in stopping:
            thread.join()
            log.info("stopped task %s", task_id)

    def shutdown(self) -> None:
        self.stop.set()
        self._stop_runners(list(self.runners))
        if self.lease_id is not None:
            try:
                self.client.release(self.lease_id)
            except HeldarError as e:
                log.warning("release failed: %s", e)

    def _run_task(self, task: Task, task_stop: threading.Event) -> None:
        posters = _Posters(self.client, task, self.posts_in_flight, task_stop, self.lease_now)
        try:
            self._task_loop(task, task_stop, posters)
        finally:
            posters.finish()
            self.client.close_thread()

    def _task_loop(self, task: Task, task_stop: threading.Event, posters: "_Posters") -> None:
        period = 1.0 / max(task.fps, 0.1)
        # A frame older than this describes a scene that has moved on.
        max_age_ms = max(2000, int(3000 * period))
        last_captured = None
        last_error = None
        while not task_stop.is_set() and not self.stop.is_set():
            started = time.monotonic()
            if posters.ticket_refused.is_set():
                # The next frame is fetched with the new lease's ticket, even if it is the same.
                posters.ticket_refused.clear()
                last_captured = None
            try:
                frame = self.client.frame(task, self.frames)
                last_error = None
                if frame and frame.captured_at != last_captured and frame.age_ms <= max_age_ms:
                    last_captured = frame.captured_at
                    detections = list(self.analyze(task, frame) or [])
                    if detections:
                        posters.post(frame, detections)
            except HeldarError as e:
                # Once per distinct problem, not at the task's frame rate.
                if str(e) != last_error:
                    log.warning("task %s: %s", task.id, e)
                    last_error = str(e)
            except Exception as e:  # noqa: BLE001 - a bad frame must not end the task
                if repr(e) != last_error:
                    log.exception("task %s: analysis failed", task.id)
                    last_error = repr(e)
            rest = period - (time.monotonic() - started)
            task_stop.wait(max(rest, 0.02))


class _Posters:
    """A task's posting threads, so the task goes on analysing while its posts wait to be
    durable. Posts leave in frame order but may be stored out of it; the daemon's zones skip a
    track's late sightings."""

    def __init__(self, client, task, count, task_stop, lease_now):
        self.client, self.task, self.task_stop, self.lease_now = client, task, task_stop, lease_now
        self.ticket_refused = threading.Event()
        # Taken before a batch is queued and given back once it is answered: the task waits
        # (and skips frames) while every poster is busy, and the queue never grows.
        self._free = threading.Semaphore(max(1, count))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._poster, daemon=True, name=f"post {task.id}")
            for _ in range(max(1, count))
        ]
        for t in self._threads:
            t.start()

    def post(self, frame: Frame, detections: list) -> None:
        """Hands the batch to an idle poster, waiting while every one is busy."""
        # A busy poster frees up: at stop, its retries give up.
        self._free.acquire()
        # A post needs the frame's time and ticket, not its pixels: a queued or finished post
        # must not keep a frame's megabytes alive.
        self._queue.put((dataclasses.replace(frame, data=b""), detections))

    def finish(self) -> None:
        """Waits for the posts in flight, then ends the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()

    def _poster(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                try:
                    self.client.post(self.task, *item, stop=self.task_stop)
                except TicketRefused:
                    log.info("task %s: ticket refused; leasing again", self.task.id)
                    self.ticket_refused.set()
                    self.lease_now.set()
                except HeldarError as e:
                    log.warning("task %s: %s", self.task.id, e)
                except Exception:  # noqa: BLE001 - one bad post must not end the poster
                    log.exception("task %s: post failed", self.task.id)
                finally:
                    self._free.release()
        finally:
            self.client.close_thread()
