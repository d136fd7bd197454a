"""Requests to `fsa_segment` through Triton's HTTP client: the one place that builds them, for
`fsa app --server` and `fsa eval --server`. Needs tritonclient (the `serve` extra), imported lazily."""

from __future__ import annotations

from typing import Any

import numpy as np

from fsa_deploy.contract import IN_CLASSES, IN_IMAGE, IN_PROB_THD, IN_SHORT_SIDE, IN_STRIDE


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
