"""The one way to read intermediate values of an ONNX graph: reductions inside the graph.

Why in the graph: a tensor added as a graph output is held by ONNX Runtime until the run ends, so
probing every tensor of one full-size ViT-B-16 + DINO B/8 crop held 24 GB (the proxy's 12 x 1765^2
attention maps) and was killed. Here each probed tensor gets a small chain of nodes right after its
producer that reduces it to what the caller needs (a scalar, or one value per channel); only those
small results are outputs, and with ONNX Runtime's priority-based order (node order) each chain runs
right after its tensor, which is then freed: 4 GB for the same crop.

Two reductions, one per user:
- `with_absmax_outputs` (the fp16 audit): largest finite |value| and whether a forbidden
  non-finite value is present, as scalars.
- `with_channel_absmax_outputs` (calibration's smoothing and outlier search): |value| max per
  last-axis channel, with the tensor's rank and element type (a caller keeps float tensors of rank >= 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fsa_deploy.contract import MASK_PREFIX

FLOAT = 1  # onnx.TensorProto.FLOAT
INLINE_BYTES = 1_900_000_000  # protobuf's 2 GB limit, with a margin (export.onnx_export.EXTERNAL_DATA_BYTES)


@dataclass(frozen=True)
class Probes:
    """The scalar outputs `with_absmax_outputs` adds, per tensor."""

    absmax: dict[str, str]  # largest finite |value|
    bad: dict[str, str]  # 1 where the tensor holds a non-finite value (NaN or +-inf) it may not hold, else 0


@dataclass(frozen=True)
class ChannelProbes:
    """The outputs `with_channel_absmax_outputs` adds, per tensor."""

    absmax: dict[str, str]  # [C] float32: max |value| of each last-axis channel
    rank: dict[str, str]  # [1]: the tensor's rank
    kind: dict[str, str]  # [0]: no values, the tensor's element type


class _Chains:
    """New nodes for `model`, each probe chain placed right after the node that writes its tensor
    (graph inputs first): the order ONNX Runtime's priority-based execution follows."""

    def __init__(self, model: Any, prefix: str):
        self.model, self.prefix = model, prefix
        self.nodes: list[Any] = []  # onnx.NodeProto, in the new order

    def add(self, op: str, ins: list[str], out: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def constant(self, name: str, data_type: int, values: list[Any]) -> str:
        from onnx import helper

        self.model.graph.initializer.append(helper.make_tensor(name, data_type, [len(values)], values))
        return name

    def output(self, name: str, typed: bool = True) -> None:
        import onnx
        from onnx import helper

        self.model.graph.output.append(helper.make_tensor_value_info(name, FLOAT, []) if typed
                                       else onnx.ValueInfoProto(name=name))

    def place(self, names: list[str], chain: Callable[[str, str], None]) -> None:
        """Run `chain(tensor, prefix)` for each wanted tensor where it is written; rewrite the node list."""
        wanted, done = set(names), set[str]()
        for t in [i.name for i in self.model.graph.input if i.name in wanted]:
            chain(t, f"{self.prefix}.{len(done)}")
            done.add(t)
        for n in list(self.model.graph.node):
            self.nodes.append(n)
            for t in n.output:
                if t in wanted and t not in done:
                    chain(t, f"{self.prefix}.{len(done)}")
                    done.add(t)
        del self.model.graph.node[:]
        self.model.graph.node.extend(self.nodes)


def with_absmax_outputs(model: Any, names: list[str]) -> Probes:
    """Add to `model`, right after each tensor of `names` is written, scalar outputs: its largest finite |value|
    (0 when it has none) and whether it holds a value it may not: NaN or +-inf, or NaN alone in a mask the
    graph builds on purpose (`MASK_PREFIX`: masked_fill with -inf before a softmax, the same in fp16)."""
    from onnx import TensorProto


    c = _Chains(model, "fsa_absmax")
    zero = c.constant("fsa_absmax.zero", FLOAT, [0.0])
    inf = c.constant("fsa_absmax.inf", FLOAT, [math.inf])
    flat_shape = c.constant("fsa_absmax.flat", TensorProto.INT64, [-1])
    absmax: dict[str, str] = {}
    bad: dict[str, str] = {}

    def largest(p: str, x: str) -> str:  # max over a flattened tensor; 0 for an empty one
        flat = c.add("Reshape", [x, flat_shape], p + ".Reshape")
        both = c.add("Concat", [flat, zero], p + ".Concat", axis=0)
        return c.add("ReduceMax", [both], p, keepdims=0)

    def chain(t: str, p: str) -> None:
        a = c.add("Abs", [t], p + ".Abs")
        finite = c.add("Less", [a, inf], p + ".Less")  # NaN and inf fail the test
        absmax[t] = largest(p, c.add("Where", [finite, a, zero], p + ".Where"))
        forbidden = c.add("IsNaN", [t], p + ".IsNaN") if t.startswith(MASK_PREFIX) else c.add("Not", [finite],
                                                                                                 p + ".Not")
        bad[t] = largest(p + ".bad", c.add("Cast", [forbidden], p + ".Cast", to=FLOAT))
        for o in (absmax[t], bad[t]):
            c.output(o)

    c.place(names, chain)
    return Probes(absmax, bad)


def with_channel_absmax_outputs(model: Any, names: list[str]) -> ChannelProbes:
    """Add to `model`, right after each tensor of `names` is written, its |value| max per last-axis channel
    ([C] in float32, the tensor seen as [-1, C]), its rank and its element type (an empty slice of it):
    tensors of any element type may be named, the caller keeps the ones it wants."""
    from onnx import TensorProto

    c = _Chains(model, "fsa_chmax")
    rows = c.constant("fsa_chmax.rows", TensorProto.INT64, [-1])
    last = c.constant("fsa_chmax.last", TensorProto.INT64, [-1])
    first_axis = c.constant("fsa_chmax.axis0", TensorProto.INT64, [0])
    none = c.constant("fsa_chmax.none", TensorProto.INT64, [0])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    absmax: dict[str, str] = {}
    rank: dict[str, str] = {}
    kind: dict[str, str] = {}

    def reduce_rows(flat: str, out: str) -> str:  # ReduceMax's axes: an input from opset 18, before an attribute
        if opset >= 18:
            return c.add("ReduceMax", [flat, first_axis], out, keepdims=0)
        return c.add("ReduceMax", [flat], out, keepdims=0, axes=[0])

    def chain(t: str, p: str) -> None:
        shape = c.add("Shape", [t], p + ".Shape")
        channels = c.add("Gather", [shape, last], p + ".Channels", axis=0)
        matrix = c.add("Concat", [rows, channels], p + ".Matrix", axis=0)
        as_float = c.add("Cast", [t], p + ".Cast", to=FLOAT)  # Abs and ReduceMax take no bool
        flat = c.add("Reshape", [c.add("Abs", [as_float], p + ".Abs"), matrix], p + ".Reshape")
        absmax[t] = reduce_rows(flat, p)
        rank[t] = c.add("Shape", [shape], p + ".Rank")
        # no element of the tensor, but its element type: the caller keeps float tensors only
        kind[t] = c.add("Slice", [c.add("Reshape", [t, rows], p + ".Flat"), none, none], p + ".Type")
        c.output(absmax[t])
        for o in (rank[t], kind[t]):
            c.output(o, typed=False)

    c.place(names, chain)
    return ChannelProbes(absmax, rank, kind)


def probe_options() -> Any:
    """Session options of every probe run: the graph as exported, chains in node order (see the module)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as exported
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    opts.log_severity_level = 3
    return opts


def ort_session(model: Any, opts: Any, inline_bytes: int = INLINE_BYTES) -> Any:
    """An ONNX Runtime CPU session on an in-memory `model` of any size: past `inline_bytes` (protobuf cannot
    serialise 2 GB: ViT-H) the large initializers go to ONNX Runtime as OrtValues
    (SessionOptions.add_external_initializers) and the graph is serialised without them."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    if model.ByteSize() <= inline_bytes:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    slim = onnx.ModelProto()
    slim.CopyFrom(model)
    names, values = [], []
    for t in slim.graph.initializer:
        if t.ByteSize() > 1024:  # stays declared, its bytes replaced by a reference that ORT resolves to the value
            names.append(t.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(t))))
            nbytes = values[-1].numpy().nbytes
            for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
                t.ClearField(f)
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", "fsa-in-memory"), ("offset", "0"), ("length", str(nbytes))):
                t.external_data.add(key=k, value=v)
    opts.add_external_initializers(names, values)
    sess = ort.InferenceSession(slim.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess._fsa_values = values  # ORT reads the OrtValues' buffers for the session's life
    return sess
