"""Requests to `fsa_segment` through Triton's HTTP client: the one place that builds them, for
`fsa app --server` and `fsa eval --server`. Needs tritonclient (the `serve` extra), imported lazily."""

from __future__ import annotations

from typing import Any

import numpy as np

from fsa_deploy.contract import IMAGE_ONNX, IN_CLASSES, IN_IMAGE, IN_PROB_THD, IN_SHORT_SIDE, IN_STRIDE, TEXT_ONNX
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.artifact import Artifact

IDENTITY_KEYS = ("attention", "fsa", "proxy", "crop", "logit_scale", "hyper_parameters")  # MetaFields names
SERVED = "served"  # fsa_segment's SUMMARY key holding `identity` of the artefact it serves


def identity(art: Artifact) -> dict[str, Any]:
    """What a served row's numbers depend on, from meta.json: the image and text graphs' hashes and the
    method preset (attention, FSA on/off, proxy, crop, logit scale, hyper-parameters). fsa_segment
    puts it in SUMMARY; `fsa eval --server` compares it with the local artefact's."""
    got = art.info.recorded
    out: dict[str, Any] = {"image_sha256": art.sha256(IMAGE_ONNX), "text_sha256": art.sha256(TEXT_ONNX)}
    out.update({k: getattr(got, k) for k in IDENTITY_KEYS})
    return out


def secure_address(url: str) -> tuple[str, bool]:
    """(host:port, TLS?) of a server URL: https:// is spoken to with TLS, never as plain HTTP;
    any scheme other than http:// and https:// is refused."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else "http"
    if scheme not in ("http", "https"):
        raise FSAError(f"--server {url}: scheme {scheme}:// (give http:// or https://)")
    return server_address(url), scheme == "https"


def server_address(url: str) -> str:
    """`host:port` as tritonclient wants it, from a URL that may carry a scheme or a trailing slash."""
    return url.split("://", 1)[-1].rstrip("/")


def segment_inputs(image: bytes, classes: str, short_side: int | None = None, stride: int | None = None,
                   prob_thd: float | None = None) -> list[Any]:
    """fsa_segment's inputs: IMAGE and CLASSES, and each optional protocol input that is given
    (an absent one means the artefact's default)."""
    import tritonclient.http as th

    values = [(IN_IMAGE, "BYTES", np.array([image], dtype=np.object_)),
              (IN_CLASSES, "BYTES", np.array([classes.encode("utf-8")], dtype=np.object_))]
    for name, dtype, value in ((IN_SHORT_SIDE, "INT32", short_side), (IN_STRIDE, "INT32", stride),
                               (IN_PROB_THD, "FP32", prob_thd)):
        if value is not None:
            values.append((name, dtype, np.array([value], dtype=np.int32 if dtype == "INT32" else np.float32)))
    out = []
    for name, dtype, array in values:
        t = th.InferInput(name, [1], dtype)
        t.set_data_from_numpy(array, binary_data=True)
        out.append(t)
    return out
