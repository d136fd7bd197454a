"""SIGINT and SIGTERM as exceptions, so that every try/finally and staging folder cleans up.

`fsa` installs the handler (`handling()`) before it imports a verb: a signal raises `Interrupted` (a
KeyboardInterrupt) in the main thread, the `finally` blocks of gate.atomic and gate.staging_folder
remove their temporary files, and the CLI exits 130 (SIGINT) or 143 (SIGTERM).

A library may swallow the exception (a bare `except:` around an import, a C++ layer that turns
it into a RuntimeError that a fallback catches), so every signal is also recorded: the commit
points (the renames of runtime.artifact) call `check()` and refuse to publish a result after a
signal, and the CLI's exit code follows the recorded signal whatever the verb returned.
Cleanup code runs `shielded()`: a second signal then is recorded, not raised, so the cleanup
itself is not cut short. Native code that calls back into Python (a C++ import hook of nanobind or
pybind11, TensorRT's logger and progress monitor) runs `native()`: an exception raised in such a
callback cannot cross the C++ frames (nanobind aborts the process, pybind11 prints it and goes on),
so there the signal is recorded and raised as Interrupted once the native call has returned.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal arrived; `exit_code` is the shell's 128 + signal number (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []
_shield = 0
_deferred: list[int] | None = None  # inside deferred(): where a signal goes instead


def _handler(signum: int, frame: object) -> None:
    if _deferred is not None:
        _deferred.append(signum)
        return
    _received.append(signum)
    if not _shield:
        raise Interrupted(signum)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted inside the block (main thread only; elsewhere a no-op).

    Recorded signals are forgotten on entry and on exit; the previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received.clear()  # a later run in this process (tests, the Python API) starts clean


def received() -> int | None:
    """The first signal recorded since handling() began, or None."""
    return _received[0] if _received else None


def exit_code() -> int | None:
    """128 + the first recorded signal, or None."""
    sig = received()
    return None if sig is None else 128 + sig


def check() -> None:
    """Raise Interrupted if a signal was recorded (even one some library swallowed)."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Cleanup that must finish: a signal during the block is recorded, not raised."""
    global _shield
    _shield += 1
    try:
        yield
    finally:
        _shield -= 1


@contextlib.contextmanager
def native() -> Iterator[None]:
    """A native call that may call back into Python (an extension module's import, a TensorRT build):
    a signal inside is recorded, not raised there; leaving the block, a recorded signal is raised as
    Interrupted (also one that came before the block and some library swallowed)."""
    with shielded():
        yield
    check()


@contextlib.contextmanager
def deferred() -> Iterator[list[int]]:
    """A run that publishes a shorter result when stopped (a video): inside the block a signal is
    appended to the yielded list, neither raised nor seen by check(), so the loop that polls the list
    stops at a frame boundary and its commit points publish what it has. Leaving the block, the
    first such signal is recorded and raised as Interrupted (the CLI exits 130 / 143 as usual)."""
    global _deferred
    outer, _deferred = _deferred, []
    caught = _deferred
    try:
        yield caught
    finally:
        _deferred = outer
        if caught:  # the exit code follows it even when the block ends in an error
            _received.append(caught[0])
    if caught:
        raise Interrupted(caught[0])
