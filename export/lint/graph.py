"""`fsa lint`'s view of a graph: loaded without weights, shape-inferred once, with the lookups checks need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, external_data_helper, numpy_helper

from fsa_deploy.errors import FSAError
from fsa_deploy.export.lint.rules import DEFAULT_DOMAINS, SHAPE_ONLY_OPS, Target

# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class Violation:
    """One broken rule at one node (or graph input / initializer, named as the node)."""

    node: str
    op_type: str
    rule: str
    message: str

    def format(self) -> str:
        return f"{self.node} ({self.op_type}): {self.rule}: {self.message}"


@dataclass
class LintReport:
    """The violations of one graph against one TensorRT target (10, 11 or "rtx")."""

    trt_major: Target
    nodes: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def format(self) -> str:
        return "\n".join(v.format() for v in self.violations)


# ---------------------------------------------------------------- the graph, analysed once

_PROTO_LIMIT = 2**31 - 1


@dataclass
class Graph:
    """A shape-inferred graph and the lookups every check needs."""

    model: onnx.ModelProto
    base_dir: Path | None
    nodes: list[tuple[str, onnx.NodeProto]]  # (label, node), in graph order
    dtypes: dict[str, int]
    shapes: dict[str, list[onnx.TensorShapeProto.Dimension] | None]  # None: rank unknown
    inits: dict[str, TensorProto]
    consts: dict[str, onnx.NodeProto]  # Constant node outputs
    inputs: list[str]  # graph inputs that are not initializers
    notes: list[Violation]  # problems found while preparing (shape inference)

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in DEFAULT_DOMAINS), 1)

    def const_value(self, name: str) -> tuple[bool, np.ndarray | None]:
        """(is a build-time constant, its value or None if unreadable). Reads only this tensor."""
        if name in self.consts:
            attr = self.consts[name].attribute
            if not attr:
                return True, None
            value = onnx.helper.get_attribute_value(attr[0])
            return True, numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)
        if name not in self.inits:
            return False, None
        tensor = TensorProto()
        tensor.CopyFrom(self.inits[name])
        try:
            if external_data_helper.uses_external_data(tensor):
                if self.base_dir is None:
                    return True, None
                external_data_helper.load_external_data_for_tensor(tensor, str(self.base_dir))
            return True, numpy_helper.to_array(tensor)
        except (OSError, ValueError):
            return True, None


def load_structure(path: str | Path) -> onnx.ModelProto:
    """The graph without external weights: cheap for graphs over 2 GB."""
    from google.protobuf.message import DecodeError  # noqa: PLC0415 - google.protobuf: heavy, imported where it is used

    path = Path(path)
    if not path.exists():
        raise FSAError(f"{path}: no such file")
    if not path.is_file():
        raise FSAError(f"{path}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FSAError(f"{path}: not an ONNX model ({reason})") from e
    if model.ir_version == 0 or not model.HasField("graph"):
        raise FSAError(f"{path}: not an ONNX model (no IR version or no graph)")
    return model


def _infer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Violation]]:
    """Inline local functions (the parser expands them too), then infer shapes with data propagation."""
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    errors = []
    for data_prop in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(model, data_prop=data_prop), []
        except (onnx.shape_inference.InferenceError, ValueError, RuntimeError, TypeError) as e:
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return model, [Violation("<graph>", "Model", "shape-inference", "; ".join(errors))]


def analyse(model: onnx.ModelProto, base_dir: Path | None) -> Graph:
    if model.ByteSize() > _PROTO_LIMIT:
        raise FSAError("graph over 2 GB in memory: save it with external data and lint the path")
    model, notes = _infer(model)
    g = model.graph
    dtypes: dict[str, int] = {}
    shapes: dict[str, list[onnx.TensorShapeProto.Dimension] | None] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if tt.elem_type:
            dtypes[vi.name] = tt.elem_type
        shapes[vi.name] = list(tt.shape.dim) if tt.HasField("shape") else None
    inits = {t.name: t for t in g.initializer}
    for t in g.initializer:
        dtypes[t.name] = t.data_type
        shapes[t.name] = [onnx.TensorShapeProto.Dimension(dim_value=d) for d in t.dims]
    nodes = [(n.name or f"<{n.op_type}#{i}>", n) for i, n in enumerate(g.node)]
    consts = {n.output[0]: n for _, n in nodes if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS}
    inputs = [i.name for i in g.input if i.name not in inits]
    return Graph(model, base_dir, nodes, dtypes, shapes, inits, consts, inputs, notes)



def value_tainted(g: Graph) -> set[str]:
    """Tensors whose values depend on graph-input values (not only on their shapes)."""
    tainted = set(g.inputs)
    for _, node in g.nodes:
        if node.op_type not in SHAPE_ONLY_OPS and any(i in tainted for i in node.input):
            tainted.update(node.output)
    return tainted

