"""The `fsa app` verb: a web page to try an artefact, on photos and on a live camera.

The page (static/: one HTML, one JS, one CSS file, no build step) talks to a small JSON API
(runtime.app.web); the work is `fsa segment`'s own Segmenter in this process, or an `fsa serve` /
Triton `fsa_segment` with --server (runtime.app.service). Starlette and uvicorn come with the
`app` extra and are imported only when the verb runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from fsa_deploy.contract import BACKENDS
from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import add_ranged

PROG = "fsa app"


def add_app(sub, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser("app", help=help_text, description=(
        "Serve a web page to try an artefact: pick or drop photos, type classes, see the overlay, its legend and "
        "timings, download the three files `fsa segment` writes, or run on the browser's camera. The API the page "
        "uses: GET /api/info, POST /api/segment (multipart image, classes, optional prob_thd). No authentication: "
        "the default --host is loopback only."))
    p.add_argument("artifact", metavar="DIR", help="artefact folder written by `fsa export` (with --server: the "
                                                  "default classes and the artefact the server must run)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    add_ranged(p, "--port", "TCP port (default 7860)", default=7860)
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="in-process backend, as `fsa segment --backend` (default auto)")
    p.add_argument("--server", metavar="URL", default=None,
                   help="forward to an `fsa serve` / Triton fsa_segment at this HTTP address (host:port) instead")
    p.set_defaults(func=run_app)
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int) -> socket.socket:
    """The bound socket (before any model loads: a busy port is the first error, one line)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise FSAError(f"--host {host}: cannot resolve it ({e.strerror})") from e
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise FSAError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from e
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run_app(args: argparse.Namespace) -> int:
    if args.server and args.backend != "auto":
        raise FSAError(f"--backend {args.backend}: applies in this process only; with --server the server's "
                       "backend runs (fsa serve --backend)")
    try:
        import python_multipart  # noqa: F401 - Starlette's form parser, else every upload fails
        import uvicorn
        from fsa_deploy.runtime.app.web import build
    except ImportError as e:
        raise FSAError(f"needs the web stack: pip install 'fsa-deploy[app]' ({e})") from e
    from fsa_deploy.runtime.app.service import Local, Remote

    sock = listening_socket(args.host, args.port)
    try:
        service = Remote(args.artifact, args.server) if args.server else Local(args.artifact, args.backend)
        if not is_loopback(args.host):
            print(f"{PROG}: --host {args.host}: the page has no authentication; anyone who can reach this address "
                  "can use it", file=sys.stderr, flush=True)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"{PROG}: serving http://{shown}:{port}/ ({service.info['backend']}, {service.info['precision']}, "
              f"{service.info['artifact']}); Ctrl-C stops it", flush=True)
        config = uvicorn.Config(build(service), log_level="warning", access_log=False, lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
