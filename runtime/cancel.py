"""Stopping work at its next step: a request whose client went away, a server that is stopping.

The caller runs the work inside `stoppable(event, ...)` (in the work's own thread); the long loops
(the crop batches of runtime.pipeline, the prompt batches of runtime.text) call `checkpoint()`,
which raises Cancelled once any of those events is set. Outside `stoppable`, `checkpoint` costs a
thread-local look-up and never raises: `fsa segment` and the Python API are unaffected.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from fsa_deploy.errors import FSAError

_local = threading.local()


class Cancelled(FSAError):
    """The work was stopped at a checkpoint (its client went away, or the server is stopping)."""


@contextlib.contextmanager
def stoppable(*events: threading.Event) -> Iterator[None]:
    """Inside the block, `checkpoint()` in this thread raises Cancelled once one of `events` is set."""
    previous = getattr(_local, "events", ())
    _local.events = previous + events
    try:
        checkpoint()
        yield
    finally:
        _local.events = previous


def checkpoint() -> None:
    if any(e.is_set() for e in getattr(_local, "events", ())):
        raise Cancelled("stopped: the request was cancelled or the server is stopping")
