"""The HTTP side of `fsa app`: the page (static files), the API, the sample photos.

Every bad request is a 400 or 413 with JSON {"error": one line}; the server keeps serving.
The upload is read with a byte cap before multipart parsing, so a huge body costs no memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import RANGES

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 32 << 20  # bytes of one POST /api/segment (the image and the fields)
FIELDS = ("image", "classes", "prob_thd")


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
    rng = RANGES["--prob-thd"]
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"prob_thd {text[:40]!r}: not a number (valid: {rng})") from None
    bad = rng.problem(value) if math.isfinite(value) else f"not a finite number (valid: {rng})"
    if bad:
        raise BadRequest(f"prob_thd {text[:40]}: {bad}")
    return value


async def form_fields(request: Request) -> tuple[bytes, str, str, float | None]:
    """(image bytes, its file name, classes text, prob_thd) of a multipart POST, or BadRequest."""
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
        image, classes, prob = form.get("image"), form.get("classes"), form.get("prob_thd")
        if not isinstance(image, UploadFile):
            raise BadRequest("field image missing (a file)")
        if not isinstance(classes, str):
            raise BadRequest("field classes missing (text: commas between classes, semicolons between synonyms)")
        if prob is not None and not isinstance(prob, str):
            raise BadRequest("field prob_thd: expected text, got a file")
        data = await image.read()
        name = os.path.basename(image.filename or "") or "image"
        return data, name, classes, parse_prob_thd(prob)
    finally:
        await form.close()


def build(service: Any) -> Starlette:
    """The Starlette application around a service (runtime.app.service Local or Remote)."""
    from fsa_deploy.runtime.app.service import UpstreamError
    from fsa_deploy.runtime.images import SAMPLE_PHOTOS

    samples = sample_folder()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def info(request: Request) -> Response:
        return JSONResponse(service.info)

    async def sample_list(request: Request) -> Response:
        names = [n for n in SAMPLE_PHOTOS if samples and (samples / n).is_file()]
        return JSONResponse({"samples": names})

    async def sample(request: Request) -> Response:
        name = request.path_params["name"]
        if samples is None or name not in SAMPLE_PHOTOS or not (samples / name).is_file():  # names from a table
            return error(f"no sample photo {name[:80]}", 404)
        return FileResponse(samples / name)

    async def segment(request: Request) -> Response:
        try:
            data, name, classes, prob = await form_fields(request)
            answer = await run_in_threadpool(service.segment, data, name, classes, prob)
        except BadRequest as e:
            return error(str(e), e.status)
        except UpstreamError as e:
            return error(str(e), 502)
        except FSAError as e:
            return error(str(e), 400)
        except Exception as e:  # noqa: BLE001 - the server keeps serving; the page shows the line
            return error(f"{type(e).__name__}: {e}", 500)
        return JSONResponse(answer.as_json())

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return error(getattr(exc, "detail", "not found"), status)

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/samples", sample_list),
        Route("/api/segment", segment, methods=["POST"]),
        Route("/samples/{name}", sample),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),  # refuses paths outside its folder
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


def sample_folder() -> Path | None:
    """scikit-image's data folder when installed (found by path; skimage is not imported)."""
    try:
        from fsa_deploy.runtime.images import sample_photos

        found = sample_photos()
    except FSAError:
        return None
    return Path(found[0]).parent if found else None
