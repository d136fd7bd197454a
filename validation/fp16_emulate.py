"""An fp16 emulation of an ONNX graph in torch, independent of the fp16 range audit (export.fp16_audit).

Each node runs in the dtype its tensors have in the graph: a node AutoCast left in fp16 computes in
torch.float16, an fp32 island in float32 (ONNX Runtime's CPU kernels upcast inside the node and cannot
show what an fp16 kernel does). The precision model is stated, one of PRECISION_MODELS:

- `fp16-storage-fp32-accumulate` (the default; TensorRT's default for fp16 GEMMs and reductions): every
  tensor an fp16 node writes is rounded to fp16, and every sum inside a node (MatMul's dot products,
  ReduceSum / ReduceMean / ReduceL2, LayerNormalization's mean and variance, which follow the graph's fp32
  `stash_type`, Softmax's denominator) accumulates in fp32 and is rounded once.
- `fp16-accumulate` (a worst case for reductions): those sums accumulate in fp16, as a pairwise tree whose
  every partial sum is rounded to fp16 (what numpy's float16 sum does): LayerNorm's sum of squares on 768
  channels at |d| = 10 (7.7e4) overflows here and not in the default model. MatMul keeps fp32 accumulation.

Elementwise steps (d * d, exp) are rounded to the node's dtype in both. It is a test instrument: the op table
covers the ops fsa export writes.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PRECISION_MODELS = ("fp16-storage-fp32-accumulate", "fp16-accumulate")
_FP16_ACCUMULATE = contextvars.ContextVar("fp16_accumulate", default=False)  # set by run_graph from its model
DTYPES = {1: torch.float32, 10: torch.float16, 11: torch.float64, 6: torch.int32, 7: torch.int64, 9: torch.bool}


def _attr(node, name: str, default: Any = None) -> Any:
    import onnx  # noqa: PLC0415 - onnx: heavy, imported where it is used

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _tree_sum(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    """The sum over `dims` as a pairwise tree in x's dtype: every partial sum rounded (fp16 accumulation)."""
    dims = tuple(sorted(d % x.dim() for d in dims))
    rest = [d for d in range(x.dim()) if d not in dims]
    y = x.permute(*rest, *dims)
    y = y.reshape(*y.shape[:len(rest)], -1)
    while y.shape[-1] > 1:
        if y.shape[-1] % 2:
            y = torch.cat([y, torch.zeros_like(y[..., :1])], dim=-1)
        y = y[..., 0::2] + y[..., 1::2]
    y = y[..., 0] if y.shape[-1] else torch.zeros(y.shape[:-1], dtype=x.dtype)
    if keep:
        for d in dims:
            y = y.unsqueeze(d)
    return y


def _sum(x: torch.Tensor, dims, keep: bool = True) -> torch.Tensor:
    """A node's internal sum: accumulated in fp32 and rounded once (default model), or in fp16 (`fp16-accumulate`)."""
    dims = tuple(dims)
    if x.dtype == torch.float16 and _FP16_ACCUMULATE.get():
        return _tree_sum(x, dims, keep)
    return x.float().sum(dim=dims, keepdim=keep).to(x.dtype)


def _mean(x: torch.Tensor, dims, keep: bool = True) -> torch.Tensor:
    n = 1
    for d in dims:
        n *= x.shape[d]
    if x.dtype == torch.float16 and _FP16_ACCUMULATE.get():
        return _tree_sum(x, tuple(dims), keep) / torch.tensor(float(n), dtype=x.dtype)
    return x.float().mean(dim=tuple(dims), keepdim=keep).to(x.dtype)


def _layer_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, axis: int, eps: float,
                stash: int = 1) -> torch.Tensor:
    """ONNX LayerNormalization: the statistics in `stash_type` (1: fp32, the default) unless fp16 accumulation
    is the model, where they accumulate in the input's dtype; the output in the input's dtype."""
    dims = tuple(range(axis % x.dim(), x.dim()))
    acc16 = x.dtype == torch.float16 and _FP16_ACCUMULATE.get()
    s = x if acc16 or stash != 1 else x.float()
    mean = _mean(s, dims)
    d = s - mean
    var = _mean(d * d, dims)  # d * d in the statistics' dtype: where fp16 accumulation overflows
    y = (d / torch.sqrt(var + torch.tensor(eps, dtype=s.dtype))).to(x.dtype)
    y = y * scale
    return y + bias if bias is not None else y


def _softmax(x: torch.Tensor, axis: int) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=axis, keepdim=True))
    return e / _sum(e, (axis,))


def _reduce(fn: Callable[..., torch.Tensor]) -> Callable:
    def run(node, x, axes=None):
        dims = _attr(node, "axes") or _ints(axes)
        keep = bool(_attr(node, "keepdims", 1))
        if not dims:
            if _attr(node, "noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        return fn(x, dims, keep)
    return run


def _slice(node, x, starts, ends, axes=None, steps=None):
    axes_l = _ints(axes) if axes is not None else list(range(len(_ints(starts))))
    steps_l = _ints(steps) if steps is not None else [1] * len(axes_l)
    idx = [slice(None)] * x.dim()
    for a, s, e, st in zip(axes_l, _ints(starts), _ints(ends), steps_l):
        if st != 1:
            raise NotImplementedError("Slice with a step")
        n = x.shape[a]
        s, e = max(-n, min(s, n)), max(-n, min(e, n))
        idx[a] = slice(s, e)
    return x[tuple(idx)]


def _resize(node, x, roi=None, scales=None, sizes=None):
    mode = _attr(node, "mode", b"nearest").decode()
    ctm = _attr(node, "coordinate_transformation_mode", b"half_pixel").decode()
    if mode != "linear" or ctm not in ("half_pixel", "pytorch_half_pixel") or x.dim() != 4:
        raise NotImplementedError(f"Resize {mode}/{ctm}")
    size = _ints(sizes)[2:] if sizes is not None and sizes.numel() else None
    if size is None:
        sc = scales.tolist()[2:]
        size = [int(x.shape[2] * sc[0]), int(x.shape[3] * sc[1])]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _gemm(node, a, b, c=None):
    a = a.transpose(0, 1) if _attr(node, "transA", 0) else a
    b = b.transpose(0, 1) if _attr(node, "transB", 0) else b
    y = _attr(node, "alpha", 1.0) * (a @ b)
    return y + _attr(node, "beta", 1.0) * c if c is not None else y


def _topk(node, x, k):
    v, i = torch.topk(x, int(k.reshape(-1)[0]), dim=_attr(node, "axis", -1), largest=bool(_attr(node, "largest", 1)),
                      sorted=bool(_attr(node, "sorted", 1)))
    return v, i


def _cumsum(node, x, axis):
    a = int(axis.reshape(-1)[0])
    if _attr(node, "reverse", 0):
        x = x.flip(a)
    y = torch.cumsum(x, dim=a).to(x.dtype)
    if _attr(node, "exclusive", 0):
        y = y - x
    return y.flip(a) if _attr(node, "reverse", 0) else y


def _split(node, x, split=None):
    axis = _attr(node, "axis", 0)
    if split is not None:
        return tuple(torch.split(x, _ints(split), dim=axis))
    n = _attr(node, "num_outputs") or len(node.output)
    return tuple(torch.tensor_split(x, n, dim=axis))


def _reshape(node, x, shape):
    s = _ints(shape)
    s = [x.shape[i] if v == 0 and not _attr(node, "allowzero", 0) else v for i, v in enumerate(s)]
    return x.reshape(s)


def _unsqueeze(node, x, axes):
    for a in sorted(a % (x.dim() + len(_ints(axes))) for a in _ints(axes)):
        x = x.unsqueeze(a)
    return x


def _squeeze(node, x, axes=None):
    return x.squeeze() if axes is None else x.squeeze(tuple(_ints(axes)))


def _clip(node, x, lo=None, hi=None):
    return torch.clamp(x, min=lo if lo is not None and lo.numel() else None,
                       max=hi if hi is not None and hi.numel() else None)


def _shape(node, x):
    s = list(x.shape)[_attr(node, "start", 0):_attr(node, "end", None)]
    return torch.tensor(s, dtype=torch.int64)


def _conv(node, x, w, b=None):
    pads = _attr(node, "pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        raise NotImplementedError("asymmetric Conv pads")
    return F.conv2d(x, w, b, stride=_attr(node, "strides", [1, 1]), padding=pads[:2],
                    dilation=_attr(node, "dilations", [1, 1]), groups=_attr(node, "group", 1))


def _cast(node, x):
    return x.to(DTYPES[_attr(node, "to")])


OPS: dict[str, Callable[..., Any]] = {
    "Add": lambda n, a, b: a + b, "Sub": lambda n, a, b: a - b, "Mul": lambda n, a, b: a * b,
    "Div": lambda n, a, b: a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc"),
    "MatMul": lambda n, a, b: a @ b, "Gemm": _gemm, "Conv": _conv,
    "Erf": lambda n, x: torch.erf(x), "Exp": lambda n, x: torch.exp(x), "Log": lambda n, x: torch.log(x),
    "Sqrt": lambda n, x: torch.sqrt(x), "Reciprocal": lambda n, x: 1 / x, "Neg": lambda n, x: -x,
    "Abs": lambda n, x: x.abs(), "Pow": lambda n, a, b: torch.pow(a, b), "Not": lambda n, x: ~x,
    "Sigmoid": lambda n, x: torch.sigmoid(x), "Tanh": lambda n, x: torch.tanh(x),
    "Where": lambda n, c, a, b: torch.where(c, a, b),
    "Equal": lambda n, a, b: a == b, "Greater": lambda n, a, b: a > b, "Less": lambda n, a, b: a < b,
    "GreaterOrEqual": lambda n, a, b: a >= b, "LessOrEqual": lambda n, a, b: a <= b,
    "Max": lambda n, *xs: torch.stack(torch.broadcast_tensors(*xs)).amax(0),
    "Min": lambda n, *xs: torch.stack(torch.broadcast_tensors(*xs)).amin(0),
    "Clip": _clip, "Cast": _cast, "Identity": lambda n, x: x,
    "Transpose": lambda n, x: x.permute(*(_attr(n, "perm") or reversed(range(x.dim())))),
    "Reshape": _reshape, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Shape": _shape,
    "Expand": lambda n, x, s: x * torch.ones(_ints(s), dtype=x.dtype) if x.dtype != torch.bool
    else x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(s)))),
    "Concat": lambda n, *xs: torch.cat(xs, dim=_attr(n, "axis")),
    "Gather": lambda n, x, i: torch.index_select(x, _attr(n, "axis", 0), i.reshape(-1).long() % x.shape[
        _attr(n, "axis", 0)]).reshape(*x.shape[:_attr(n, "axis", 0) % x.dim()], *i.shape,
                                      *x.shape[_attr(n, "axis", 0) % x.dim() + 1:]),
    "Slice": _slice, "Split": _split, "Resize": _resize, "TopK": _topk, "CumSum": _cumsum,
    "ReduceMean": _reduce(lambda x, d, k: _mean(x, d, k)),
    "ReduceSum": _reduce(lambda x, d, k: _sum(x, d, k)),
    "ReduceMax": _reduce(lambda x, d, k: x.amax(dim=d, keepdim=k)),
    "ReduceMin": _reduce(lambda x, d, k: x.amin(dim=d, keepdim=k)),
    "ReduceL2": _reduce(lambda x, d, k: torch.sqrt(_sum(x * x, d, k))),
    "LayerNormalization": lambda n, x, s, b=None: _layer_norm(x, s, b, _attr(n, "axis", -1), _attr(n, "epsilon", 1e-5),
                                                              _attr(n, "stash_type", 1)),
    "Softmax": lambda n, x: _softmax(x, _attr(n, "axis", -1)),
}


def run_graph(model, feeds: dict[str, np.ndarray], keep: tuple[str, ...] = (),
              precision: str = PRECISION_MODELS[0]) -> dict[str, np.ndarray]:
    """Evaluate `model` node by node in torch under `precision` (PRECISION_MODELS); returns the graph outputs and
    the tensors in `keep`."""
    if precision not in PRECISION_MODELS:
        raise ValueError(f"precision model {precision!r}: choose from {', '.join(PRECISION_MODELS)}")
    token = _FP16_ACCUMULATE.set(precision == "fp16-accumulate")
    try:
        return _run(model, feeds, keep)
    finally:
        _FP16_ACCUMULATE.reset(token)


def _run(model, feeds: dict[str, np.ndarray], keep: tuple[str, ...]) -> dict[str, np.ndarray]:
    from onnx import numpy_helper  # noqa: PLC0415 - onnx: heavy, imported where it is used

    env: dict[str, torch.Tensor] = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
                                    for t in model.graph.initializer}
    env.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
    with torch.no_grad():
        for node in model.graph.node:
            if node.op_type == "Constant":
                env[node.output[0]] = torch.from_numpy(numpy_helper.to_array(_attr(node, "value")).copy())
                continue
            fn = OPS.get(node.op_type)
            if fn is None:
                raise NotImplementedError(f"fp16 emulation: no {node.op_type} ({node.name})")
            args = [env[t] if t else None for t in node.input]
            while args and args[-1] is None:
                args.pop()
            out = fn(node, *args)
            for name, value in zip(node.output, out if isinstance(out, tuple) else (out,)):
                if name:
                    env[name] = value
    names = [o.name for o in model.graph.output] + list(keep)
    return {k: env[k].float().numpy() if env[k].is_floating_point() else env[k].numpy() for k in names}
