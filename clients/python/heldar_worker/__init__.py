"""A client of the Heldar Edge worker contract: lease tasks, pull sampled frames, post detections.

>>> from heldar_worker import Detection, run
>>> def analyze(task, frame):
...     return [Detection("person", 0.9, (0.1, 0.2, 0.3, 0.4), track_id="7")]
>>> run(analyze, token="hld_...", worker_id="people-1", task_types=["people"])  # doctest: +SKIP
"""

from .client import (
    Client,
    Detection,
    Frame,
    GaveUp,
    HeldarError,
    Lease,
    Refused,
    Stored,
    Task,
    TicketRefused,
    Unreachable,
    run,
)

__all__ = [
    "Client",
    "Detection",
    "Frame",
    "GaveUp",
    "HeldarError",
    "Lease",
    "Refused",
    "Stored",
    "Task",
    "TicketRefused",
    "Unreachable",
    "run",
]
__version__ = "1.0.0"
