"""Graph analysis for calibration: who reads a tensor, what a tensor is computed from, and what a
Q/DQ graph quantizes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class QdqSummary:
    """What a Q/DQ graph quantizes; `in_scope` lists Q/DQ nodes that touch the fp32 block (must be empty)."""

    pairs: int = 0
    quantized_ops: Counter = field(default_factory=Counter)  # op type -> nodes fed by a DQ
    in_scope: list[str] = field(default_factory=list)




def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for t in n.input:
            out.setdefault(t, []).append(n)
    return out


def _reach(start: Iterable[onnx.NodeProto], step: Callable[[onnx.NodeProto], Iterable[onnx.NodeProto]]) -> set[str]:
    """Names of the nodes reached from `start` by following `step` (a walk over the graph)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        node = todo.pop()
        if node.name not in seen:
            seen.add(node.name)
            todo.extend(step(node))
    return seen


def downstream(graph: onnx.GraphProto, tensors: list[str]) -> set[str]:
    """Names of the nodes that read the given tensors, directly or through other nodes."""
    consumers = _consumers(graph)
    return _reach((c for t in tensors for c in consumers.get(t, [])),
                  lambda n: (c for t in n.output for c in consumers.get(t, [])))


def upstream(graph: onnx.GraphProto, tensors: list[str]) -> set[str]:
    """Names of the nodes the given tensors are computed from, directly or through other nodes."""
    producer = {t: n for n in graph.node for t in n.output}
    return _reach((producer[t] for t in tensors if t in producer),
                  lambda n: (producer[t] for t in n.input if t in producer))




def summarize(graph: onnx.GraphProto, scope: str) -> QdqSummary:
    """Count Q/DQ pairs and the ops they feed; list any Q/DQ next to a node of the fp32 block."""
    producer = {t: n for n in graph.node for t in n.output}
    consumers = _consumers(graph)
    s = QdqSummary()
    for n in graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        s.pairs += n.op_type == "QuantizeLinear"
        after = [c for t in n.output for c in consumers.get(t, [])]
        before = [producer[t] for t in n.input if t in producer]
        if n.op_type == "DequantizeLinear":
            s.quantized_ops.update(c.op_type for c in after if c.op_type not in QDQ_OPS)
        if scope and any(m.name.startswith(scope) for m in (*before, *after)):
            s.in_scope.append(n.name)
    return s




