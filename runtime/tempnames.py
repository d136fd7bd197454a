"""Our own temporary names, and which of a folder's names are ours to sweep.

Temporary files and folders we make carry MARKER and the writer's PID in their name
(`.NAME.fsa-tmp-PID-RANDOM`), so the next run on a folder can sweep what a killed run left
(runtime/gate.py's `sweep_stale`) without ever touching a name a user could have chosen.
"""

from __future__ import annotations

import os
import re

MARKER = "fsa-tmp"  # in every temporary name we create: `.{name}.fsa-tmp-{pid}-{random}`
OLD_MARKER = "fsa-old"  # a folder moved aside by --overwrite until the new one is in place
_OURS = re.compile(rf"^\..*\.(?:{MARKER}|{OLD_MARKER})-(\d+)-[^/\\]*$")


def temp_prefix(name: str, kind: str = MARKER) -> str:
    """`.NAME.fsa-tmp-PID-` (NAME cut to 100 characters: the whole stays a legal file name)."""
    return f".{name[:100]}.{kind}-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # no signal 0 on Windows: assume alive (never sweep a live run's files)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def is_ours(name: str) -> int | None:
    """The PID recorded in one of our temporary names, else None (a name a user could choose)."""
    m = _OURS.match(name)
    return int(m.group(1)) if m else None
