"""The Python client against a running daemon (started by tests/it/worker_clients.rs).

The daemon records a synthetic camera with one task of type HELDAR_TASK_TYPE (320 pixels wide);
HELDAR_TOKEN is a worker token and HELDAR_VIEWER_TOKEN a viewer token, for reading back what was
stored; HELDAR_API_SOCKET is the daemon's http.socket.
"""

import dataclasses
import os
import socket
import threading
import time
import unittest
from urllib.parse import urlsplit

import httpx

from heldar_worker import (
    Client,
    Detection,
    Frame,
    Refused,
    TicketRefused,
    run,
)

API = os.environ["HELDAR_API"]
TOKEN = os.environ["HELDAR_TOKEN"]
VIEWER = os.environ["HELDAR_VIEWER_TOKEN"]
TASK_TYPE = os.environ["HELDAR_TASK_TYPE"]
API_SOCKET = os.environ["HELDAR_API_SOCKET"]


def wait_for(what, condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stored(camera_id):
    r = httpx.get(
        f"{API}/api/v1/cameras/{camera_id}/detections?limit=500",
        headers={"X-API-Key": VIEWER},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()


class LateDaemon:
    """A port where nothing answers until ``open_after`` seconds, then a plain TCP relay to the
    daemon: the daemon restarting, as a worker sees it."""

    def __init__(self, open_after):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        target = urlsplit(API)
        self.target = (target.hostname, target.port)
        self.thread = threading.Thread(target=self._serve, args=(open_after,), daemon=True)
        self.thread.start()

    def _serve(self, open_after):
        time.sleep(open_after)
        listener = socket.create_server(("127.0.0.1", self.port))
        while True:
            conn, _ = listener.accept()
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.client = Client(API, TOKEN)
        self.worker_id = f"py-{self.id().rsplit('.', 1)[-1]}"
        lease = self.client.lease(self.worker_id, [TASK_TYPE])
        self.assertEqual(len(lease.tasks), 1, lease)
        self.lease = lease
        self.task = lease.tasks[0]

    def tearDown(self):
        self.client.release(self.lease.lease_id)
        self.client.close()

    def fresh_frame(self, after=None) -> Frame:
        def newer():
            f = self.client.frame(self.task)
            return f if f and f.captured_at != after else None

        return wait_for("a sampled frame", newer)

    def test_a_lease_offers_the_task_with_its_frame_route(self):
        self.assertEqual(self.task.task_type, TASK_TYPE)
        self.assertTrue(self.task.frame_url.startswith(f"/api/v1/cameras/{self.task.camera_id}/frame"))
        self.assertIn(f"task={self.task.id}", self.task.frame_url)
        self.assertGreater(self.task.fps, 0)
        self.assertTrue(self.lease.expires_at.endswith("Z") or "+" in self.lease.expires_at)

    def test_a_ticketed_frame_posted_twice_is_stored_once(self):
        frame = self.fresh_frame()
        self.assertTrue(frame.jpeg.startswith(b"\xff\xd8"), "a JPEG")
        self.assertIsNotNone(frame.ticket, "a leased task's frame carries a ticket")
        seen = [Detection("person", 0.87, (0.1, 0.2, 0.3, 0.4), track_id="py7",
                          attributes={"colour": "red"})]
        first = self.client.post(self.task, frame, seen)
        self.assertEqual((first.detections, first.duplicate), (1, False))
        again = self.client.post(self.task, frame, seen)
        self.assertEqual((again.detections, again.duplicate), (0, True))
        rows = [r for r in stored(self.task.camera_id) if r["track_id"] == "py7"]
        self.assertEqual(len(rows), 1, rows)
        row = rows[0]
        self.assertEqual((row["label"], row["track_id"]), ("person", "py7"))
        self.assertEqual(row["bbox"], [0.1, 0.2, 0.3, 0.4])
        self.assertEqual(row["attributes"]["colour"], "red")
        self.assertEqual(row["attributes"]["source"], "worker")
        self.assertTrue(row["frame_id"].startswith(self.task.id + ":"), row)

    def test_a_tampered_ticket_is_a_ticket_refusal(self):
        frame = self.fresh_frame()
        forged = dataclasses.replace(frame, ticket=frame.ticket[:-2] + "AA")
        with self.assertRaises(TicketRefused) as refused:
            self.client.post(self.task, forged, [Detection("person", 0.5, (0, 0, 0.1, 0.1))])
        self.assertEqual(refused.exception.status, 401)
        self.assertIn("frame_ticket", refused.exception.error)

    def test_a_bad_box_is_refused_and_names_the_field(self):
        frame = self.fresh_frame()
        with self.assertRaises(Refused) as refused:
            self.client.post(self.task, frame, [Detection("person", 0.5, (1.5, 0, 0.1, 0.1))])
        self.assertNotIsInstance(refused.exception, TicketRefused)
        self.assertEqual(refused.exception.status, 400)
        self.assertIn("detections[0].bbox", refused.exception.error)

    def test_a_post_is_retried_until_the_daemon_answers(self):
        frame = self.fresh_frame()
        late = LateDaemon(open_after=1.2)
        started = time.monotonic()
        seen = [Detection("person", 0.6, (0.2, 0.2, 0.2, 0.2), track_id="late1")]
        with Client(f"http://127.0.0.1:{late.port}", TOKEN) as client:
            result = client.post(self.task, frame, seen)
        self.assertGreaterEqual(time.monotonic() - started, 1.0, "the first attempts found no daemon")
        self.assertEqual((result.detections, result.duplicate), (1, False))
        rows = [r for r in stored(self.task.camera_id) if r["track_id"] == "late1"]
        self.assertEqual(len(rows), 1, rows)


class RawFrameTest(unittest.TestCase):
    """Raw frames over the API's Unix socket, under the same lease and ticket rules."""

    def setUp(self):
        self.client = Client(token=TOKEN, socket=API_SOCKET)
        self.lease = self.client.lease("py-raw", [TASK_TYPE])
        self.assertEqual(len(self.lease.tasks), 1, self.lease)
        self.task = self.lease.tasks[0]

    def tearDown(self):
        self.client.release(self.lease.lease_id)
        self.client.close()

    def same_frame(self):
        """An RGB and a grey frame of one capture (the sampler may move on between the two)."""

        def pair():
            rgb = self.client.frame(self.task, "rgb")
            gray = self.client.frame(self.task, "gray")
            return (rgb, gray) if rgb and gray and rgb.captured_at == gray.captured_at else None

        return wait_for("an RGB and a grey frame of one capture", pair)

    def test_raw_frames_are_the_pixels_with_their_geometry(self):
        import numpy as np

        rgb, gray = self.same_frame()
        self.assertEqual((rgb.format, rgb.width, rgb.stride), ("rgb24", 320, 960))
        self.assertEqual(len(rgb.data), rgb.stride * rgb.height)
        self.assertEqual((gray.format, gray.width, gray.height, gray.stride),
                         ("gray8", 320, rgb.height, 320))
        pixels = rgb.array()
        self.assertEqual(pixels.shape, (rgb.height, 320, 3))
        self.assertFalse(pixels.flags.owndata, "a view over the received bytes, not a copy")
        r, g, b = (pixels[..., i].astype(np.uint32) for i in range(3))
        luma = ((77 * r + 150 * g + 29 * b + 128) >> 8).astype(np.uint8)
        self.assertTrue(np.array_equal(gray.array(), luma), "grey is the luma of the RGB frame")
        self.assertGreater(int(pixels.std()), 5, "a picture, not a blank")
        with self.assertRaises(ValueError):
            rgb.jpeg

    def test_a_raw_frames_ticket_is_as_good_as_a_jpegs(self):
        # A frame captured after this test began: no other test has posted it.
        first = wait_for("a raw frame", lambda: self.client.frame(self.task, "gray"))
        frame = wait_for("the next raw frame", lambda: (
            lambda f: f if f and f.captured_at != first.captured_at else None
        )(self.client.frame(self.task, "gray")))
        self.assertIsNotNone(frame.ticket)
        stored_ = self.client.post(self.task, frame, [Detection("person", 0.7, (0.5, 0.5, 0.1, 0.1),
                                                                track_id="raw1")])
        self.assertEqual((stored_.detections, stored_.duplicate), (1, False))

    def test_the_socket_checks_tokens_as_the_port_does(self):
        with Client(token="hld_" + "0" * 64, socket=API_SOCKET) as intruder, \
                self.assertRaises(Refused) as refused:
            intruder.lease("py-intruder", [TASK_TYPE])
        self.assertEqual(refused.exception.status, 401)
        with self.assertRaises(ValueError):
            self.client.frame(self.task, "png")


def start_run(client, worker_id, track_id, stop):
    """``run`` on its own thread, analysing every frame as one person with ``track_id``;
    returns the thread and the list of analysed frames' capture times."""
    analysed = []

    def analyze(task, frame):
        analysed.append(frame.captured_at)
        return [Detection("person", 0.9, (0.4, 0.4, 0.2, 0.2), track_id=track_id)]

    worker = threading.Thread(
        target=run,
        kwargs=dict(analyze=analyze, client=client, worker_id=worker_id,
                    task_types=[TASK_TYPE], renew_every=0.5, stop=stop),
    )
    worker.start()
    return worker, analysed


class RunTest(unittest.TestCase):
    def test_run_analyzes_new_frames_posts_them_and_releases_on_stop(self):
        answers = []

        class Recording(Client):
            def post(self, *args, **kwargs):
                answers.append(super().post(*args, **kwargs))
                return answers[-1]

        client = Recording(API, TOKEN)
        stop = threading.Event()
        worker, analysed = start_run(client, "py-run", "run1", stop)
        wait_for("three analysed frames", lambda: len(analysed) >= 3)
        stop.set()
        worker.join(timeout=20)
        self.assertFalse(worker.is_alive(), "run returns once stopped")
        self.assertEqual(len(set(analysed)), len(analysed), f"each frame analysed once: {analysed}")
        self.assertEqual(len(answers), len(analysed), "each analysed frame posted, even at stop")

        check = client.lease("py-run-check", [TASK_TYPE])
        try:
            self.assertEqual(len(check.tasks), 1, "released on stop, so another worker gets it")
            rows = [r for r in stored(check.tasks[0].camera_id) if r["track_id"] == "run1"]
            # A frame another test already posted is a duplicate: stored once, by that test.
            fresh = [a for a in answers if not a.duplicate]
            self.assertEqual(len(rows), len(fresh), f"every new frame is stored: {answers}")
            self.assertGreaterEqual(len(fresh), 2, answers)
        finally:
            client.release(check.lease_id)
            client.close()

    def test_run_analyses_the_next_frames_while_a_post_waits_for_its_answer(self):
        # A box with a commit linger answers a post only after it; here the first answer is
        # held back until three more frames have been analysed.
        answer_first = threading.Event()
        posts = []

        class SlowToAnswer(Client):
            def post(self, *args, **kwargs):
                posts.append(args[1].captured_at)
                if len(posts) == 1:
                    answer_first.wait(timeout=30)
                return super().post(*args, **kwargs)

        client = SlowToAnswer(API, TOKEN)
        stop = threading.Event()
        worker, analysed = start_run(client, "py-inflight", "inflight", stop)
        try:
            wait_for("three frames analysed and posted behind the first post",
                     lambda: len(analysed) >= 4 and len(posts) >= 4)
            self.assertFalse(answer_first.is_set())
        finally:
            answer_first.set()
            stop.set()
            worker.join(timeout=20)
            client.close()
        self.assertFalse(worker.is_alive(), "run returns once stopped")
        self.assertEqual(sorted(set(posts)), sorted(set(analysed)), "each analysed frame posted")


if __name__ == "__main__":
    unittest.main()
