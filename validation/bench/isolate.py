"""Each row in a fresh child process, forked from a server that imported the heavy libraries once."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing import forkserver
from typing import Any

from fsa_deploy.validation.bench.data import PRELOAD, one_line


class Children:
    """Runs each job in a fresh process forked from a server that imported PRELOAD once
    (a spawned child would spend seconds importing open_clip for every row)."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(list(PRELOAD))
        forkserver.ensure_running()  # its imports overlap with the exports that come first

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) in a child; a failure in it is raised here as RuntimeError with one line."""
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child_main, args=(fn, args, send), daemon=True)
        proc.start()
        send.close()
        try:
            kind, value = recv.recv()
        except EOFError:
            proc.join()
            code = proc.exitcode or 0
            raise RuntimeError(f"child process died (signal {-code}{': out of memory?' if code == -9 else ''})"
                               if code < 0 else f"child process exited with code {code}") from None
        finally:
            recv.close()
        proc.join()
        if kind == "error":
            raise RuntimeError(value)
        return value


def _child_main(fn: Callable[..., Any], args: tuple, conn: Any) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # noqa: BLE001 - the parent reports it; the child must not die silently
        conn.send(("error", one_line(e)))
    finally:
        conn.close()


