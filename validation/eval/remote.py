"""`fsa eval --server URL...`: the artefact row computed by Triton servers running `fsa serve`
(or NVIDIA's container with `fsa triton`'s repository), `--concurrency` requests in flight each.

Each request is fsa_segment's: the image file's bytes, the class list, and the protocol as the
optional inputs SHORT_SIDE / STRIDE / PROB_THD, so a served label map is the local one (with
`fsa segment`'s float resize: the protocol's `resize` is "float" with servers). Results are
collected as they complete, so a slow or stopped server holds back only its own requests; each
request has a timeout (`--server-timeout`, default from the largest image's size), after which
the server is dropped with one line and its images go to another. An error reply fails that
image only. At start every server answers a health probe and segments a tiny image whose
SUMMARY must name the local artefact's identity (image graph, text graph, method preset);
`https://` is spoken with TLS, never as plain HTTP.
"""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
from PIL import Image

from fsa_deploy.contract import (
    OUT_LABELS,
    OUT_SUMMARY,
    SEGMENT_MODEL,
)
from fsa_deploy.errors import FSAError
from fsa_deploy.log import logger
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.serve.client import SERVED, identity, secure_address, segment_inputs
from fsa_deploy.runtime.text import classes_text
from fsa_deploy.validation.eval.datasets import Item, image_size, read_mask
from fsa_deploy.validation.eval.protocol import RESIZE_LONG
from fsa_deploy.validation.eval.runner import Row

LOG = logger("validation")

HEALTH_TIMEOUT_S = 10.0  # the health probe: a live server answers at once


def default_timeout(found: list[Item]) -> float:
    """Seconds one image may take on a server: 60 s plus 30 s per megapixel of the split's largest
    image (decode, windows at the protocol's size, the upsampling to the image's size on a busy CPU)."""
    pixels = max((h * w for h, w in (image_size(it.image) for it in found)), default=0)
    return 60.0 + 30.0 * pixels / 1e6


class ServerError(Exception):
    """The server answered with an error for this request (the image fails, the server stays)."""


def _http() -> Any:
    try:
        import tritonclient.http as th
    except ImportError as e:
        raise FSAError(f"--server needs tritonclient: pip install 'fsa-deploy[serve]' ({e})") from e
    return th


class Servers:
    """The live servers and one client per (thread, server): tritonclient's are not shared."""

    def __init__(self, urls: list[str], classes_text: str, protocol: dict[str, Any], timeout: float = 600.0):
        _http()  # a missing tritonclient is one line here, not a "dead" server below
        self.urls = list(dict.fromkeys(urls))
        self.address = {u: secure_address(u) for u in self.urls}
        self.alive = list(self.urls)
        self.classes_text, self.protocol, self.timeout = classes_text, protocol, float(timeout)
        self.n_classes = classes_text.count(",") + 1
        self.local = threading.local()
        self.lock = threading.Lock()
        self.turn = 0

    def client(self, url: str, timeout: float | None = None) -> Any:
        clients = getattr(self.local, "clients", None)
        if clients is None:
            clients = self.local.clients = {}
        t = timeout or self.timeout
        if (url, t) not in clients:
            th = _http()
            address, tls = self.address[url]
            clients[(url, t)] = th.InferenceServerClient(address, ssl=tls, connection_timeout=min(t, 30.0),
                                                         network_timeout=t)
        return clients[(url, t)]

    def healthy(self, url: str) -> str | None:
        """None when the server says it is live and fsa_segment is ready; else why not (one line)."""
        try:
            c = self.client(url, min(HEALTH_TIMEOUT_S, self.timeout))
            if not c.is_server_live():
                return "not live"
            if not c.is_model_ready(SEGMENT_MODEL):
                return f"{SEGMENT_MODEL} not ready"
        except Exception as e:  # noqa: BLE001 - transport: refused, reset, TLS, timeout
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no reply'}"
        return None

    def drop(self, url: str, why: str) -> None:
        with self.lock:
            if url in self.alive:
                self.alive.remove(url)
                LOG.warning(f"fsa eval: server {url} dropped ({why})")

    def pick(self) -> str:
        with self.lock:
            if not self.alive:
                raise FSAError(f"--server: no server left of {', '.join(self.urls)}")
            self.turn += 1
            return self.alive[self.turn % len(self.alive)]

    def inputs(self, data: bytes) -> list:
        return segment_inputs(data, self.classes_text, self.protocol["short_side"], self.protocol["stride"],
                              self.protocol["prob_thd"])

    def once(self, url: str, data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
        """One request to one server: (labels, summary); ServerError for an error reply; any other
        exception is a transport failure."""
        from tritonclient.utils import InferenceServerException

        try:
            r = self.client(url).infer(SEGMENT_MODEL, self.inputs(data))
        except InferenceServerException as e:
            if e.status() is not None:  # an HTTP reply: the server is alive and refused this request
                raise ServerError(e.message() or str(e)) from None
            raise
        return r.as_numpy(OUT_LABELS).astype(np.int32), json.loads(r.as_numpy(OUT_SUMMARY)[0])

    def labels(self, data: bytes, name: str) -> np.ndarray:
        """Labels of one image, retried on another server after a transport failure."""
        while True:
            url = self.pick()
            try:
                labels = self.once(url, data)[0]
                labels[labels >= self.n_classes] = 0  # fsa_segment's unlabelled (under PROB_THD): the official class 0
                return labels
            except ServerError as e:
                raise FSAError(f"{name}: {url} replied with an error: {e}") from None
            except Exception as e:  # noqa: BLE001 - transport: connection refused, reset, timeout, ...
                self.drop(url, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no reply'}")

    def probe(self, art: Artifact) -> None:
        """Every server: a health probe, then a tiny image whose SUMMARY names what it serves; dead
        ones are dropped, one serving another artefact or preset is refused."""
        want = identity(art)
        buf = io.BytesIO()
        Image.new("RGB", (16, 12), (120, 90, 60)).save(buf, format="PNG")
        for url in list(self.alive):
            if (why := self.healthy(url)) is not None:
                self.drop(url, f"health probe: {why}")
                continue
            try:
                _, summary = self.once(url, buf.getvalue())
            except ServerError as e:
                raise FSAError(f"--server {url}: refused a probe image ({e})") from None
            except Exception as e:  # noqa: BLE001 - transport
                self.drop(url, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no reply'}")
                continue
            theirs = summary.get(SERVED)
            if not isinstance(theirs, dict):
                raise FSAError(f"--server {url}: does not report what it serves (an older fsa serve); refusing "
                               "to compare a model that cannot be identified")
            differ = [k for k in want if theirs.get(k) != want[k]]
            if differ:
                k = differ[0]
                short = 12 if k.endswith("sha256") else 60
                raise FSAError(f"--server {url}: serves artefact {k} {json.dumps(theirs.get(k))[:short]}, "
                               f"--artifact has {json.dumps(want[k])[:short]} "
                               f"(differs in: {', '.join(differ)}); refusing to compare different models")
        if not self.alive:
            raise FSAError(f"--server: no server answered ({', '.join(self.urls)})")


def server_row(urls: list[str], art: Artifact, sha: str, proto: Any, vocab: Any, timeout: float | None,
               found: list[Item]) -> Row:
    """The served row; its `segment` is filled by `fan_out` (the labels come from the servers)."""
    scale = art.info.recorded.logit_scale
    if proto.long_side != RESIZE_LONG:
        raise FSAError(f"--server with --long-side {proto.long_side}: fsa_segment resizes with the configs' "
                       f"long side {RESIZE_LONG}")
    if abs((proto.logit_scale if scale is None else scale) - proto.logit_scale) > 1e-9:
        raise FSAError(f"--server: the protocol's logit scale {proto.logit_scale:g} differs from the artefact's "
                       f"{scale}, which fsa_segment uses")
    servers = Servers(urls, classes_text(vocab), proto.as_json(), timeout or default_timeout(found))
    servers.probe(art)
    row = Row("server", "triton", None, lambda item, img: np.zeros(0), f"server:{sha}")
    row.servers = servers  # type: ignore[attr-defined]
    return row


def fan_out(rows: list[Row], reduce_zero_label: bool, concurrency: int, decode: Any):
    """A `parallel` for runner.run_rows: the servers work `concurrency` requests each; the main
    thread takes each result as it completes (not in order: a stalled request holds back nothing
    else), decodes that image, runs any local row (the reference) and scores it."""
    row = next(r for r in rows if hasattr(r, "servers"))
    servers: Servers = row.servers

    def parallel(todo: list[Item], score, failures: list[str], bar) -> None:
        got: dict[str, np.ndarray] = {}
        row.segment = lambda item, img: got.pop(item.name)
        workers = max(1, concurrency * len(servers.alive))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers, thread_name_prefix="eval-server") as pool:
            running: dict[Future, Item] = {}
            pending = iter(todo)

            def labels(it: Item) -> Any:
                return servers.labels(it.image.read_bytes(), str(it.image))

            def refill() -> None:
                while len(running) < workers:
                    item = next(pending, None)
                    if item is None:
                        return
                    fut = pool.submit(labels, item)
                    running[fut] = item

            refill()
            while running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    item = running.pop(fut)
                    try:
                        got[item.name] = fut.result()
                        score(item, decode(item.image), read_mask(item.mask, reduce_zero_label))
                    except FSAError as e:
                        if str(e).startswith("--server: no server left"):
                            for f in running:
                                f.cancel()
                            raise
                        msg = str(e)
                        failures.append(msg if msg.startswith(str(item.image)) else f"{item.image}: {msg}")
                    got.pop(item.name, None)
                    bar.step()
                refill()
        row.seconds = time.perf_counter() - t0  # the servers' wall time: their throughput

    return parallel
