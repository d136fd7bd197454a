"""One walk over an ONNX graph's data flow, shared by the exporter (naming the feedback block)
and calibration (what stays in fp32).

Why not a library's: onnx-graphsurgeon (installed only for ModelOpt's quantizer, which imports
it) links tensors to their producers and consumers but has no transitive walk (its cleanup()
would need a copy of the graph per query), and onnx's only
one (onnx.utils.Extractor) is private and runs shape inference over the whole model first,
which fails past protobuf's 2 GB. Nodes are identified by index: the exporter walks before
nodes have (unique) names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


class Walk:
    """Producer and consumer links of a graph's nodes, by node index."""

    def __init__(self, graph: onnx.GraphProto):
        self.nodes = list(graph.node)
        self.producer = {t: i for i, n in enumerate(self.nodes) for t in n.output if t}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(i)

    def producer_of(self, tensor: str) -> onnx.NodeProto | None:
        """The node that writes `tensor`; None for a graph input, an initializer or an unknown name."""
        i = self.producer.get(tensor)
        return None if i is None else self.nodes[i]

    def consumers_of(self, tensor: str) -> list[onnx.NodeProto]:
        """The nodes that read `tensor`, once per input slot it fills."""
        return [self.nodes[i] for i in self.consumers.get(tensor, [])]

    def readers(self, tensors: Iterable[str]) -> list[int]:
        return [i for t in tensors for i in self.consumers.get(t, [])]

    def writers(self, tensors: Iterable[str]) -> list[int]:
        return [self.producer[t] for t in tensors if t in self.producer]

    @staticmethod
    def reach(start: Iterable[int], step: Callable[[int], Iterable[int]]) -> set[int]:
        """The nodes reached from `start` by following `step`, `start` included."""
        seen: set[int] = set()
        todo = list(start)
        while todo:
            i = todo.pop()
            if i not in seen:
                seen.add(i)
                todo.extend(step(i))
        return seen

    def upstream(self, tensors: Iterable[str]) -> set[int]:
        """The nodes the given tensors are computed from, directly or through other nodes."""
        return self.reach(self.writers(tensors), lambda i: self.writers(self.nodes[i].input))

    def downstream(self, tensors: Iterable[str], avoid: Iterable[int] = ()) -> set[int]:
        """The nodes that read the given tensors, directly or through other nodes; the walk neither
        enters nor passes through the nodes in `avoid`."""
        skip = set(avoid)
        outside = lambda ts: (i for i in self.readers(ts) if i not in skip)
        return self.reach(outside(tensors), lambda i: outside(self.nodes[i].output))

    def names(self, indices: Iterable[int]) -> set[str]:
        return {self.nodes[i].name for i in indices}
