"""Graph analysis for calibration: who reads a tensor, what a tensor is computed from, and what a
Q/DQ graph quantizes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fsa_deploy.export.graph_walk import Walk

if TYPE_CHECKING:
    import onnx


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class QdqSummary:
    """What a Q/DQ graph quantizes; `in_scope` lists Q/DQ nodes that touch the fp32 block (must be empty)."""

    pairs: int = 0
    quantized_ops: Counter = field(default_factory=Counter)  # op type -> nodes fed by a DQ
    in_scope: list[str] = field(default_factory=list)




def downstream(graph: onnx.GraphProto, tensors: list[str]) -> set[str]:
    """Names of the nodes that read the given tensors, directly or through other nodes."""
    walk = Walk(graph)
    return walk.names(walk.downstream(tensors))


def upstream(graph: onnx.GraphProto, tensors: list[str]) -> set[str]:
    """Names of the nodes the given tensors are computed from, directly or through other nodes."""
    walk = Walk(graph)
    return walk.names(walk.upstream(tensors))


def summarize(graph: onnx.GraphProto, scope: str) -> QdqSummary:
    """Count Q/DQ pairs and the ops they feed; list any Q/DQ next to a node of the fp32 block."""
    walk = Walk(graph)
    s = QdqSummary()
    for n in walk.nodes:
        if n.op_type not in QDQ_OPS:
            continue
        s.pairs += n.op_type == "QuantizeLinear"
        after = [walk.nodes[i] for i in walk.readers(n.output)]
        before = [walk.nodes[i] for i in walk.writers(n.input)]
        if n.op_type == "DequantizeLinear":
            s.quantized_ops.update(c.op_type for c in after if c.op_type not in QDQ_OPS)
        if scope and any(m.name.startswith(scope) for m in (*before, *after)):
            s.in_scope.append(n.name)
    return s
