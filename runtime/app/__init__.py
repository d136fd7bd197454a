"""The `fsa app` verb: a web page to try an artefact, on photos and on a live camera.

The page (static/: one HTML, one JS, one CSS file, no build step) talks to a small JSON API
(runtime.app.web); the work is `fsa segment`'s own Segmenter in this process, or an `fsa serve` /
Triton `fsa_segment` with --server (runtime.app.service). Starlette and uvicorn come with the
`app` extra and are imported only when the verb runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from types import FrameType
from typing import TYPE_CHECKING

from fsa_deploy.contract import BACKENDS
from fsa_deploy.errors import FSAError
from fsa_deploy.interrupts import shielded
from fsa_deploy.log import logger
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime.app.live import LiveSource
from fsa_deploy.runtime.app.service import Local, Remote
from fsa_deploy.runtime.images import MAX_PIXELS, MAX_PIXELS_ENV, max_pixels

if TYPE_CHECKING:  # the web stack is the `app` extra, imported when the verb runs
    from starlette.applications import Starlette

    from fsa_deploy.runtime.app.web import Guard

LOG = logger("runtime")

PROG = "fsa app"
BYTES_PER_PIXEL = 24  # what one request holds per image pixel: the decoded photo, labels, PNGs, copies
MEMORY_SHARE = 4  # the pixel limit lets this many requests decode at once within physical memory
GRACE_S = 5  # after SIGINT/SIGTERM: running work stops at its next batch; answers get this long to go out


def add_app(sub, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser("app", help=help_text, description=(
        "Serve a web page to try an artefact: pick or drop photos, type classes, see the overlay, its legend and "
        "timings, download the three files `fsa segment` writes, or run on the browser's camera. The API the page "
        "uses: GET /api/info, POST /api/segment (multipart image, classes, optional prob_thd, overlay=1 for "
        "NAME_overlay.png). No authentication: the default --host is loopback only; requests naming another Host, "
        "or sent by another site's page (Origin), get 403. The pixel limit defaults to what memory allows "
        "(FSA_MAX_PIXELS overrides it)."))
    p.add_argument("artifact", metavar="DIR", help="artefact folder written by `fsa export` (with --server: the "
                                                  "default classes and the artefact the server must run)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    add_ranged(p, "--port", "TCP port (default 7860)", default=7860)
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="in-process backend, as `fsa segment --backend` (default auto)")
    p.add_argument("--server", metavar="URL", default=None,
                   help="forward to an `fsa serve` / Triton fsa_segment at this HTTP address (host:port) instead")
    p.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                   help="also answer requests whose Host is NAME (a DNS name this machine has; repeatable). "
                        "Loopback names and the --host address are always answered")
    p.add_argument("--allow-origin", metavar="ORIGIN", action="append", default=[],
                   help="let pages of ORIGIN (scheme://host[:port]) use the API (repeatable); other sites get 403")
    p.add_argument("--source", metavar="SRC", default=None,
                   help="also stream a camera (/dev/videoN or an index), video file or stream (rtsp://, http://, ...) "
                        "of this machine, annotated, to the page (GET /api/stream: MJPEG); see docs/VIDEO.md")
    add_ranged(p, "--stream-timeout", "seconds a --source camera or stream may stay silent (default 10)",
               verb="segment", default=10.0)
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


def app_pixel_limit() -> int:
    """The upload pixel limit when FSA_MAX_PIXELS is not set: a share of physical memory, at most the CLI's."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): a 16 GB machine's share
        memory = 16 << 30
    return max(1_000_000, min(MAX_PIXELS, memory // (BYTES_PER_PIXEL * MEMORY_SHARE)))


def guard_of(args: argparse.Namespace, listen: str) -> Guard:
    from fsa_deploy.runtime.app.web import Guard

    for origin in args.allow_origin:
        if not origin.startswith(("http://", "https://")) or origin.rstrip("/").count("/") != 2:
            raise FSAError(f"--allow-origin {origin}: expected scheme://host[:port], e.g. http://192.168.1.5:7860")
    return Guard(listen=listen.lower(), hosts=tuple(h.lower() for h in args.allow_host),
                 origins=tuple(o.rstrip("/") for o in args.allow_origin))


def serve_until_signal(app: Starlette, sock: socket.socket, guard: Guard, live: LiveSource | None = None) -> None:
    """uvicorn on `sock`; SIGINT/SIGTERM set guard.stopping, so work in flight stops at its next batch
    and the process exits within seconds, not when the last request would have finished; they stop the
    --source stream too, so its open MJPEG responses end instead of holding the graceful shutdown."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            guard.stopping.set()
            if live is not None:
                live.stop()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACE_S)
    Server(config).run(sockets=[sock])


def run_app(args: argparse.Namespace) -> int:
    if args.server and args.backend != "auto":
        raise FSAError(f"--backend {args.backend}: applies in this process only; with --server the server's "
                       "backend runs (fsa serve --backend)")
    try:
        import python_multipart  # noqa: F401 - Starlette's form parser, else every upload fails
        import uvicorn  # noqa: F401

        from fsa_deploy.runtime.app.web import starlette_app
    except ImportError as e:
        raise FSAError(f"needs the web stack: pip install 'fsa-deploy[app]' ({e})") from e

    max_pixels()  # a bad FSA_MAX_PIXELS is refused before anything starts
    os.environ.setdefault(MAX_PIXELS_ENV, str(app_pixel_limit()))  # this process's decoder reads it per request
    guard = guard_of(args, args.host)
    sock = listening_socket(args.host, args.port)
    live = None
    try:
        service = Remote(args.artifact, args.server) if args.server else Local(args.artifact, args.backend)
        if args.source:
            live = LiveSource(service, args.source, service.info["classes"], args.stream_timeout).start()
            service.info["source"] = args.source
        if not is_loopback(args.host):
            LOG.warning(f"{PROG}: --host {args.host}: the page has no authentication; anyone who can reach this "
                        "address can use it")
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"{PROG}: serving http://{shown}:{port}/ ({service.info['backend']}, {service.info['precision']}, "
              f"{service.info['artifact']}); Ctrl-C stops it", flush=True)
        serve_until_signal(starlette_app(service, guard, live), sock, guard, live)
    finally:
        if live is not None:
            with shielded():  # a second Ctrl-C does not cut the wait short
                live.close()  # its decoder and model threads end before the interpreter does
        sock.close()
    return 0
