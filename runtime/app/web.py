"""The HTTP side of `fsa app`: the page (static files), the API, the sample photos.

Every bad request is a 400 or 413 with JSON {"error": one line}; the server keeps serving.
The upload is read with a byte cap before multipart parsing, so a huge body costs no memory.
A request whose Host is not this server's (DNS rebinding) or whose Origin is another site's
(a page elsewhere posting to it) gets 403 before anything runs (`Guard`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import PROB_THD
from fsa_deploy.runtime.app.live import routes as live_routes
from fsa_deploy.runtime.app.service import Job, UpstreamError
from fsa_deploy.runtime.cancel import Cancelled

STATIC = Path(__file__).parent / "static"
EXAMPLES = Path(__file__).parent / "examples"  # small photos shipped with the package (LICENSES.txt there)
MAX_UPLOAD = 32 << 20  # bytes of one POST /api/segment (the image and the fields)
FIELDS = ("image", "classes", "prob_thd", "overlay", "request_id")
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the page's name for a request, to ask its progress
DISCONNECT_POLL_S = 0.2  # how often a running request looks whether its client is still there
LOOPBACK_NAMES = ("localhost",)  # with *.localhost (RFC 6761) and loopback addresses


@dataclass
class Guard:
    """Which Host and Origin headers the API answers: Host a loopback name or address, the listening
    address (any IP address when it listens on all of them: a DNS rebinding attack sends a name),
    or one of `hosts`; Origin absent (curl, scripts) or this very Host, or one of `origins`."""

    listen: str = "127.0.0.1"
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    stopping: threading.Event = field(default_factory=threading.Event)  # set when the server stops

    def host_ok(self, host: str) -> bool:
        name = split_host(host)
        if name in self.hosts or name == self.listen.lower() or name in LOOPBACK_NAMES or name.endswith(".localhost"):
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.listen in ("0.0.0.0", "::")

    def problem(self, headers: Any) -> str | None:
        """None when the request may go on, else the one-line reason for its 403."""
        host = headers.get("host", "")
        if not self.host_ok(host):
            return (f"Host {host[:80]!r} is not this server's name; start fsa app with --allow-host "
                    f"{split_host(host)[:80] or 'NAME'} to serve it")
        origin = headers.get("origin")
        if origin is None or origin.rstrip("/") in self.origins:
            return None
        parts = urlsplit(origin)
        if parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower():
            return None
        return (f"Origin {origin[:80]!r} is another site; start fsa app with --allow-origin {origin[:80]} "
                "to let its pages use this server")


def split_host(host: str) -> str:
    """A Host header's name without its port, lower case ("[::1]:7860" -> "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error(message: str, status: int) -> JSONResponse:
    line = " ".join(str(message).split())[:500]  # one line, bounded
    return JSONResponse({"error": line}, status_code=status)


async def capped_body(request: Request, cap: int) -> bytes:
    """The request body, or BadRequest 413 as soon as it passes `cap` bytes (or says it will)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > cap):
        raise BadRequest(f"upload of {length} bytes is above the limit of {cap:,} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BadRequest(f"upload above the limit of {cap:,} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def replayed(request: Request, body: bytes) -> Request:
    """A Request over `body` already read (Starlette's form parser then reads no socket)."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def parse_prob_thd(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    rng = PROB_THD
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"prob_thd {text[:40]!r}: not a number (valid: {rng})") from None
    bad = rng.problem(value) if math.isfinite(value) else f"not a finite number (valid: {rng})"
    if bad:
        raise BadRequest(f"prob_thd {text[:40]}: {bad}")
    return value


def parse_flag(text: Any, name: str) -> bool:
    if text is None or text == "" or text == "0":
        return False
    if text == "1":
        return True
    raise BadRequest(f"field {name}: {str(text)[:40]!r}: expected 1 or 0")


def parse_request_id(text: Any) -> str | None:
    if text is None or text == "":
        return None
    if not isinstance(text, str) or not REQUEST_ID.fullmatch(text):
        raise BadRequest("field request_id: 1 to 64 letters, digits, '-' or '_'")
    return text


async def form_fields(request: Request) -> tuple[Job, str | None]:
    """The Job of a multipart POST (image bytes, its file name, classes text, prob_thd, overlay) and its
    request_id, or BadRequest."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("expected multipart/form-data with fields image (a file) and classes")
    body = await capped_body(request, MAX_UPLOAD)
    try:
        form = await replayed(request, body).form(max_files=1, max_fields=len(FIELDS), max_part_size=MAX_UPLOAD)
    except HTTPException as e:
        raise BadRequest(f"multipart body: {e.detail}") from None
    except Exception as e:  # noqa: BLE001 - python-multipart's parse errors have no common base
        raise BadRequest(f"multipart body: {type(e).__name__}: {e}") from None
    try:
        image, classes, prob, overlay, rid = (form.get(n) for n in FIELDS)
        if not isinstance(image, UploadFile):
            raise BadRequest("field image missing (a file)")
        if not isinstance(classes, str):
            raise BadRequest("field classes missing (text: commas between classes, semicolons between synonyms)")
        if prob is not None and not isinstance(prob, str):
            raise BadRequest("field prob_thd: expected text, got a file")
        data = await image.read()
        name = os.path.basename(image.filename or "") or "image"
        return Job(data, name, classes, parse_prob_thd(prob), parse_flag(overlay, "overlay")), parse_request_id(rid)
    finally:
        await form.close()


def examples() -> list[str]:
    """The example photos shipped with the page (runtime/app/examples, their licences beside them)."""
    return sorted(p.name for p in EXAMPLES.glob("*.jpg"))


async def until_done_or_gone(request: Request, work: asyncio.Future, stop: threading.Event,
                             stopping: threading.Event) -> Any:
    """Wait for `work`; if the client disconnects (or the server stops) meanwhile, set `stop`: the work
    stops at its next crop batch (runtime.cancel) and its lock goes to the next request."""
    while True:
        done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
        if done:
            return work.result()
        if not stop.is_set() and (stopping.is_set() or await request.is_disconnected()):
            stop.set()


def starlette_app(service: Any, guard: Guard | None = None, live: Any = None) -> Starlette:
    """The Starlette application around a service (runtime.app.service Local or Remote); `live`: the
    --source stream (runtime.app.live), whose routes answer 404 without it."""
    guard = guard or Guard()
    shipped = examples()
    progress: dict[str, dict[str, Any]] = {}  # request_id -> the step its work is at (requests in flight only)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def info(request: Request) -> Response:
        return JSONResponse(service.info)

    async def sample_list(request: Request) -> Response:
        return JSONResponse({"samples": shipped})

    async def sample(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in shipped:  # names from the folder's listing, never a path
            return error(f"no example photo {name[:80]}", 404)
        return FileResponse(EXAMPLES / name)

    async def step(request: Request) -> Response:
        at = progress.get(request.path_params["rid"])
        return JSONResponse(at) if at is not None else error("no such request in flight", 404)

    async def segment(request: Request) -> Response:
        stop, rid = threading.Event(), None
        try:
            job, rid = await form_fields(request)
            job.stop = stop
            if rid is not None:
                progress[rid] = {"stage": "waiting", "done": 0, "total": 0}
                job.report = lambda stage, done, total: progress.__setitem__(
                    rid, {"stage": stage, "done": done, "total": total})
            work = asyncio.ensure_future(run_in_threadpool(service.segment, job))
            answer = await until_done_or_gone(request, work, stop, guard.stopping)
        except BadRequest as e:
            return error(str(e), e.status)
        except Cancelled as e:
            return error(str(e), 503 if guard.stopping.is_set() else 499)
        except UpstreamError as e:
            return error(str(e), 502)
        except FSAError as e:
            return error(str(e), 400)
        except Exception as e:  # noqa: BLE001 - the server keeps serving; the page shows the line
            return error(f"{type(e).__name__}: {e}", 500)
        finally:
            progress.pop(rid or "", None)
        return JSONResponse(answer.as_json())

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return error(getattr(exc, "detail", "not found"), status)

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/samples", sample_list),
        Route("/api/segment", segment, methods=["POST"]),
        Route("/api/progress/{rid}", step),
        Route("/samples/{name}", sample),
        *live_routes(live),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),  # refuses paths outside its folder
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    return guarded(app, guard)


def guarded(app: Any, guard: Guard) -> Any:
    """`app` behind the Host and Origin check (a pure ASGI wrapper: nothing of the request is read)."""
    async def wrapper(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (why := guard.problem(Headers(scope=scope))):
            await error(why, 403)(scope, receive, send)
            return
        await app(scope, receive, send)

    return wrapper
