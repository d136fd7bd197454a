"""Triton python model `fsa_segment`: what `fsa segment` does, for one encoded image per request.

Inputs IMAGE (BYTES: one image file) and CLASSES (BYTES: the --classes text), optionally the
evaluation protocol SHORT_SIDE (INT32; the resize then keeps the configs' long side 2048), STRIDE
(INT32) and PROB_THD (FP32), each absent meaning the artefact's defaults; outputs LABELS
(UINT16 [H, W]) and SUMMARY (BYTES: fsa segment's NAME.json). The work is the runtime's own
Segmenter (copied into this version folder by `fsa triton` / `fsa serve`) with a backend that
sends crops to the image model and tokens to the text model through BLS, so the label map is
`fsa segment`'s by construction. One Segmenter per class list, least recently used dropped; class
embeddings go through an on-disk cache that the instances share (parameter cache_dir).
"""

import dataclasses
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

LONG_SIDE = 2048  # the official configs' Resize(scale=(2048, short_side), keep_ratio=True)


class TritonPythonModel:
    def initialize(self, args):
        here = Path(args["model_repository"]) / args["model_version"]
        sys.path.insert(0, str(here))  # the runtime copied next to this file, ahead of anything installed
        from fsa_deploy.contract import (
            IN_CLASSES,
            IN_IMAGE,
            IN_PROB_THD,
            IN_SHORT_SIDE,
            IN_STRIDE,
            OUT_LABELS,
            OUT_SUMMARY,
        )
        from fsa_deploy.errors import FSAError
        from fsa_deploy.runtime.images import decode_image
        from fsa_deploy.runtime.segmenter import Segmenter, SegmenterCache, as_vocabulary, protocol_problems
        from fsa_deploy.runtime.serve.bls import SegmentParams, TritonBackend

        self.FSAError, self.decode_image, self.as_vocabulary = FSAError, decode_image, as_vocabulary
        self.protocol_problems = protocol_problems
        self.names = (IN_IMAGE, IN_CLASSES, OUT_LABELS, OUT_SUMMARY)
        self.protocol_names = (IN_SHORT_SIDE, IN_STRIDE, IN_PROB_THD)
        self.params = SegmentParams.from_config(json.loads(args["model_config"]).get("parameters", {}))
        backend = TritonBackend(pb_utils, self.params)
        # the instances share one on-disk cache (one encodes a class list, the others read it);
        # SegmenterCache keeps each class list's Segmenter in memory (LRU)
        cache = self.params.cache_dir or str(Path(tempfile.gettempdir()) / "fsa-deploy-text")
        base = Segmenter.from_artifact(here / "artifact", backend, cache_dir=cache, batch=self.params.max_batch)
        from fsa_deploy.runtime.serve.client import SERVED, identity

        self.served = (SERVED, identity(base_meta(here / "artifact")))
        self.segmenters = SegmenterCache(base, self.params.cache_size)

    def execute(self, requests):
        return [self._reply(r) for r in requests]

    def _reply(self, request):
        try:
            return self._segment(request)
        except self.FSAError as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"fsa_segment: {e}"))
        except Exception as e:  # noqa: BLE001 - any failure is this request's error reply, never a dead stub
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"fsa_segment: {type(e).__name__}: {e}"))

    def _one(self, request, name):
        t = pb_utils.get_input_tensor_by_name(request, name)
        if t is None:
            raise self.FSAError(f"input {name} missing")
        a = t.as_numpy().reshape(-1)
        if a.size != 1:
            raise self.FSAError(f"input {name}: one element expected, got {a.size}")
        v = a[0]
        return v if isinstance(v, bytes) else str(v).encode()

    def _number(self, request, name):
        """An optional scalar input: None when absent; a finite number otherwise."""
        t = pb_utils.get_input_tensor_by_name(request, name)
        if t is None:
            return None
        a = t.as_numpy().reshape(-1)
        if a.size != 1:
            raise self.FSAError(f"input {name}: one element expected, got {a.size}")
        v = a[0].item()
        if not np.isfinite(v):
            raise self.FSAError(f"input {name}: {v} is not a finite number")
        return v

    def _with_protocol(self, seg, request):
        """The Segmenter with the request's SHORT_SIDE / STRIDE / PROB_THD (its checks rerun)."""
        short, stride, thd = (self._number(request, n) for n in self.protocol_names)
        if short is None and stride is None and thd is None:
            return seg
        if short is not None and not 1 <= short <= 16384:
            raise self.FSAError(f"input {self.protocol_names[0]}: {short} outside [1, 16384]")
        changes: dict[str, Any] = {}
        if short is not None:
            changes.update(short_side=int(short), long_side=LONG_SIDE)
        if stride is not None:
            changes["stride"] = int(stride)
        if thd is not None:
            changes["prob_thd"] = float(thd)
        inputs = dict(zip(("short_side", "stride", "prob_thd"), self.protocol_names))
        for name, bad in self.protocol_problems(seg.crop, **{k: v for k, v in changes.items() if k in inputs}):
            raise self.FSAError(f"input {inputs[name]}: {changes[name]}: {bad}")  # the input, not a CLI flag
        out = dataclasses.replace(seg, **changes)  # __post_init__ checks them again
        out.vocabulary, out.text, out.last_cache_hit = seg.vocabulary, seg.text, seg.last_cache_hit
        return out

    def _segmenter(self, classes_text):
        vocab = self.as_vocabulary(classes_text)
        if len(vocab.queries) > self.params.max_classes:
            raise self.FSAError(f"CLASSES: {len(vocab.queries)} class names, at most {self.params.max_classes}")
        return self.segmenters.get(vocab)

    def _segment(self, request):
        in_image, in_classes, out_labels, out_summary = self.names
        data = self._one(request, in_image)
        try:
            classes = self._one(request, in_classes).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.FSAError(f"CLASSES: not UTF-8 text ({e})") from None
        seg = self._with_protocol(self._segmenter(classes), request)
        # fsa segment's decoder and pixel limit (FSA_MAX_PIXELS), on the request's bytes; handed
        # over as HWC, the layout Segmenter reads first when an array fits both
        result = seg.segment(self.decode_image(io.BytesIO(data), in_image).transpose(1, 2, 0))
        summary = json.dumps({**result.summary(), self.served[0]: self.served[1]}, indent=2) + "\n"
        return pb_utils.InferenceResponse([
            pb_utils.Tensor(out_labels, np.ascontiguousarray(result.labels, dtype=np.uint16)),
            pb_utils.Tensor(out_summary, np.array([summary.encode()], dtype=np.object_)),
        ])


def base_meta(folder):
    """The artefact copy beside this file (its meta.json is what `fsa eval --server` checks)."""
    from fsa_deploy.runtime.artifact import Artifact

    return Artifact.load(folder)
