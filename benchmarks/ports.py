"""Free local ports for the servers a benchmark or a test starts (`fsa serve` and `fsa app` take theirs from the
user, so the product has no use for this)."""

from __future__ import annotations

import socket


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n ports nobody listens on now (bound at once, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((host, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
