"""`fsa eval --server URL...`: the artefact row computed by Triton servers running `fsa serve`
(or NVIDIA's container with `fsa triton`'s repository), `--concurrency` requests in flight each.

Each request is fsa_segment's: the image file's bytes, the class list, and the protocol as the
optional inputs SHORT_SIDE / STRIDE / PROB_THD, so a served label map is the local one. A
transport failure (connection refused, reset, timeout) drops that server with one line and the
image goes to another; an error reply fails that image only. At start every server segments a
tiny probe image: a server that cannot is dropped, one whose artefact hash differs is refused.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from fsa_deploy.runtime.serve.client import segment_inputs, server_address
from fsa_deploy.runtime.text import classes_text
from fsa_deploy.validation.eval.datasets import Item, read_mask
from fsa_deploy.validation.eval.protocol import RESIZE_LONG
from fsa_deploy.validation.eval.runner import Row

from fsa_deploy.contract import (
    OUT_LABELS,
    OUT_SUMMARY,
    SEGMENT_MODEL,
)
from fsa_deploy.errors import FSAError

TIMEOUT_S = 600.0  # one image of a large benchmark on a busy CPU server


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

    def __init__(self, urls: list[str], classes_text: str, protocol: dict[str, Any]):
        _http()  # a missing tritonclient is one line here, not a "dead" server below
        self.urls = list(dict.fromkeys(urls))
        self.alive = list(self.urls)
        self.classes_text, self.protocol = classes_text, protocol
        self.n_classes = classes_text.count(",") + 1
        self.local = threading.local()
        self.lock = threading.Lock()
        self.turn = 0

    def client(self, url: str) -> Any:
        clients = getattr(self.local, "clients", None)
        if clients is None:
            clients = self.local.clients = {}
        if url not in clients:
            th = _http()
            clients[url] = th.InferenceServerClient(server_address(url), connection_timeout=TIMEOUT_S,
                                                    network_timeout=TIMEOUT_S)
        return clients[url]

    def drop(self, url: str, why: str) -> None:
        with self.lock:
            if url in self.alive:
                self.alive.remove(url)
                print(f"fsa eval: server {url} dropped ({why})", file=sys.stderr, flush=True)

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

    def probe(self, artifact_sha: str) -> None:
        """Every server segments a tiny image: dead ones are dropped, a differing artefact refused."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 12), (120, 90, 60)).save(buf, format="PNG")
        for url in list(self.alive):
            try:
                _, summary = self.once(url, buf.getvalue())
            except ServerError as e:
                raise FSAError(f"--server {url}: refused a probe image ({e})") from None
            except Exception as e:  # noqa: BLE001 - transport
                self.drop(url, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no reply'}")
                continue
            theirs = summary.get("artifact_sha256")
            if theirs != artifact_sha:
                raise FSAError(f"--server {url}: serves artefact {str(theirs)[:12]}, --artifact is "
                               f"{artifact_sha[:12]}; refusing to compare different models")
        if not self.alive:
            raise FSAError(f"--server: no server answered ({', '.join(self.urls)})")


def server_row(urls: list[str], meta: dict[str, Any], sha: str, proto: Any, vocab: Any) -> Row:
    """The served row; its `segment` is filled by `fan_out` (the labels come from the servers)."""
    if proto.long_side != RESIZE_LONG:
        raise FSAError(f"--server with --long-side {proto.long_side}: fsa_segment resizes with the configs' "
                       f"long side {RESIZE_LONG}")
    if abs(float(meta.get("logit_scale", proto.logit_scale)) - proto.logit_scale) > 1e-9:
        raise FSAError(f"--server: the protocol's logit scale {proto.logit_scale:g} differs from the artefact's "
                       f"{meta.get('logit_scale')}, which fsa_segment uses")
    servers = Servers(urls, classes_text(vocab), proto.as_json())
    servers.probe(sha)
    row = Row("server", "triton", None, lambda item, img: np.zeros(0), f"server:{sha}")
    row.servers = servers  # type: ignore[attr-defined]
    return row


def fan_out(rows: list[Row], reduce_zero_label: bool, concurrency: int):
    """A `parallel` for runner.run_rows: the servers work `concurrency` requests each ahead of
    the main thread, which decodes, runs any local row (the reference) and scores, in order."""
    from fsa_deploy.runtime.images import load_image

    row = next(r for r in rows if hasattr(r, "servers"))
    servers: Servers = row.servers  # type: ignore[attr-defined]

    def parallel(todo: list[Item], score, failures: list[str], bar) -> None:
        got: dict[str, np.ndarray] = {}
        row.segment = lambda item, img: got.pop(item.name)
        workers = max(1, concurrency * len(servers.alive))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers, thread_name_prefix="eval-server") as pool:
            window: list[tuple[Item, Future]] = []
            pending = iter(todo)

            def refill() -> None:
                while len(window) < 2 * workers:
                    item = next(pending, None)
                    if item is None:
                        return
                    window.append((item, pool.submit(lambda it=item: servers.labels(it.image.read_bytes(),
                                                                                       str(it.image)))))

            refill()
            while window:
                item, fut = window.pop(0)
                refill()
                try:
                    got[item.name] = fut.result()
                    score(item, load_image(item.image), read_mask(item.mask, reduce_zero_label))
                except FSAError as e:
                    if str(e).startswith("--server: no server left"):
                        for _, f in window:
                            f.cancel()
                        raise
                    msg = str(e)
                    failures.append(msg if msg.startswith(str(item.image)) else f"{item.image}: {msg}")
                got.pop(item.name, None)
                bar.step()
        row.seconds = time.perf_counter() - t0  # the servers' wall time: their throughput

    return parallel
