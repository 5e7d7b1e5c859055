#!/usr/bin/env python3
"""A people detector for the box: OpenCV's HOG person detector on the Python worker client.

It leases the tasks of one task type (``people`` unless ``--task-type`` says otherwise), finds
people in each new frame, and posts them as ``person`` detections with normalised boxes and
track ids from a small IoU tracker, so zones see each person enter, dwell and leave.

    python3 -m venv people && . people/bin/activate
    pip install ./clients/python numpy "opencv-python-headless<5"
    TOKEN=$(heldar token create --role worker --name people)
    HELDAR_TOKEN=$TOKEN python3 examples/people_worker.py [--socket /run/heldar/api.sock]

The HOG detector ships inside OpenCV (no model to download). It finds upright people about 100
to 200 pixels tall in the frame it is given, so the task's ``width`` decides what it can see and
what it costs: 1024 pixels wide takes about 0.33 s per frame on one core of this kind of box.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np

from heldar_worker import Detection, run

log = logging.getLogger("people_worker")


def iou(a, b) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    id: str
    box: tuple
    missed: int = 0


class IouTracker:
    """Gives a person the same track id from frame to frame: each box takes the id of the live
    track it overlaps most (greedily, best overlap first); a track survives ``patience`` frames
    without a match, which bridges the frames where HOG misses someone."""

    def __init__(self, min_iou: float = 0.3, patience: int = 3):
        self.min_iou, self.patience = min_iou, patience
        self.tracks: list[Track] = []
        self.ids = itertools.count(1)
        # Ids start again after a restart: a per-run prefix keeps zones from taking a new person
        # for one they already follow.
        self.run = format(int(time.time()) % 1_000_000, "x")

    def update(self, boxes: list) -> list:
        """The track id of each box, in order."""
        pairs = sorted(
            ((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
            reverse=True,
        )
        ids: list = [None] * len(boxes)
        used = set()
        for overlap, ti, bi in pairs:
            if overlap < self.min_iou:
                break
            if ti in used or ids[bi] is not None:
                continue
            used.add(ti)
            self.tracks[ti].box, self.tracks[ti].missed = boxes[bi], 0
            ids[bi] = self.tracks[ti].id
        for ti, t in enumerate(self.tracks):
            if ti not in used:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.patience]
        for bi, box in enumerate(boxes):
            if ids[bi] is None:
                track = Track(f"p{self.run}-{next(self.ids)}", box)
                self.tracks.append(track)
                ids[bi] = track.id
        return ids


class PeopleDetector:
    """HOG + linear SVM (Dalal and Triggs), as OpenCV ships it."""

    def __init__(self, min_confidence: float = 0.6):
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.min_confidence = min_confidence

    def detect(self, image) -> list:
        """``(box, confidence)`` pairs, boxes normalised to the image."""
        height, width = image.shape[:2]
        rects, weights = self.hog.detectMultiScale(
            image, winStride=(8, 8), padding=(8, 8), scale=1.05
        )
        found = []
        for (x, y, w, h), weight in zip(rects, np.ravel(weights)):
            # The SVM's margin, squashed to 0..1: 0.5 is the decision boundary.
            confidence = 1.0 / (1.0 + math.exp(-float(weight)))
            if confidence < self.min_confidence:
                continue
            x0, y0 = max(0, x), max(0, y)
            x1, y1 = min(width, x + w), min(height, y + h)
            box = (x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height)
            found.append((tuple(round(v, 4) for v in box), round(confidence, 3)))
        return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--api", default=os.environ.get("HELDAR_API", "http://127.0.0.1:8000"))
    p.add_argument("--token", default=os.environ.get("HELDAR_TOKEN") or os.environ.get("HELDAR_API_KEY"),
                   help="a worker token (default: $HELDAR_TOKEN, or $HELDAR_API_KEY as the "
                        "heldar-worker@ unit sets it)")
    p.add_argument("--worker-id", default=f"people-{os.uname().nodename}")
    p.add_argument("--task-type", default="people")
    p.add_argument("--min-confidence", type=float, default=0.6)
    p.add_argument("--frames", choices=["rgb", "jpeg"], default="rgb",
                   help="raw RGB (no JPEG encode in the daemon, no decode here) or JPEG")
    p.add_argument("--socket", default=os.environ.get("HELDAR_API_SOCKET"),
                   help="the daemon's http.socket, to talk over it instead of --api")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: several lines a second in the journal.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cv2.setNumThreads(1)

    detector = PeopleDetector(args.min_confidence)
    trackers: dict = {}

    def analyze(task, frame):
        if frame.format == "jpeg":
            image = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("task %s: a frame that is not a JPEG", task.id)
                return []
        else:
            # HOG takes the strongest gradient of the three channels: RGB or BGR alike.
            image = frame.array()
        found = detector.detect(image)
        tracker = trackers.setdefault(task.id, IouTracker())
        ids = tracker.update([box for box, _ in found])
        return [Detection("person", c, box, track_id=t) for (box, c), t in zip(found, ids)]

    log.info("people worker %s on %s, task type %s", args.worker_id, args.api, args.task_type)
    run(analyze, api=args.api, token=args.token, worker_id=args.worker_id,
        task_types=[args.task_type], frames=args.frames, socket=args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
