"""Stopping work at its next step, and saying how far it got: a request whose client went away, a
server that is stopping, a page that shows progress.

The caller runs the work inside `stoppable(event, ..., report=fn)` (in the work's own thread); the
long loops (the crop batches of runtime.pipeline, the prompt batches of runtime.text) call
`checkpoint(stage, done, total)`, which raises Cancelled once any of those events is set and
otherwise hands the step to `report`. Outside `stoppable`, `checkpoint` costs a thread-local
look-up and never raises: `fsa segment` and the Python API are unaffected.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from fsa_deploy.errors import FSAError

Report = Callable[[str, int, int], None]  # (stage, done, total)
_local = threading.local()


class Cancelled(FSAError):
    """The work was stopped at a checkpoint (its client went away, or the server is stopping)."""


@contextlib.contextmanager
def stoppable(*events: threading.Event, report: Report | None = None) -> Iterator[None]:
    """Inside the block, `checkpoint()` in this thread raises Cancelled once one of `events` is set,
    and reports each step to `report`."""
    previous = (getattr(_local, "events", ()), getattr(_local, "report", None))
    _local.events = previous[0] + events
    _local.report = report or previous[1]
    try:
        checkpoint()
        yield
    finally:
        _local.events, _local.report = previous


def checkpoint(stage: str = "", done: int = 0, total: int = 0) -> None:
    if any(e.is_set() for e in getattr(_local, "events", ())):
        raise Cancelled("stopped: the request was cancelled or the server is stopping")
    report = getattr(_local, "report", None)
    if report is not None and stage:
        report(stage, done, total)
