"""What stays in fp32: each exclusion rule is a function of the graph, listed once in RULES."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fsa_deploy.calibration.graph import upstream
from fsa_deploy.export.graph_walk import Walk

if TYPE_CHECKING:
    import onnx


EXCLUDED_OP_TYPES = ("Softmax",)  # never quantized: a Softmax in int8/fp8 flattens attention


def clip_trunk_nodes(graph: onnx.GraphProto, stages: dict[str, str]) -> list[str]:
    """CLIP's trunk: what the values V' are computed from and the proxy features are not.

    `--quantize proxy` keeps it in fp32. CLIP's patch features are matched against the text
    directly, so their int8 noise lands on class margins; the proxy only shapes attention.
    Measured on ViT-B-16 + DINO B/8 at 336 (random init, one crop): with CLIP's trunk in int8,
    crop logits rel L2 0.046 and pixel agreement 0.59; the proxy alone, 0.0044 and 0.997. The
    proxy is 415 of the 521 GFLOP of a crop.
    """
    if "values" not in stages or "proxy_features" not in stages:
        return []
    return sorted(upstream(graph, [stages["values"]]) - upstream(graph, [stages["proxy_features"]]))


def excluded_nodes(graph: onnx.GraphProto, scope: str, head_inputs: tuple[str, ...] = ()) -> list[str]:
    """Nodes kept out of quantization besides the block itself (the names under `scope`).

    - the FSA head: everything downstream of `head_inputs` (the stage tensors proxy_features
      and values: steps 6-15). The proxy attention thresholds a cosine similarity at its
      mean and the feedback sharpens it with exp(lamda * Sim); quantization noise there
      flips masks (measured on the tiny config: 1,526 proxy-mask flips, pixel agreement
      0.69 with it quantized). The fp16 export keeps the head in fp32 too;
    - downstream of the block (steps 14-15, the tail), for the same reason;
    - outside nodes that read a tensor the block reads: ModelOpt quantizes a shared tensor
      once and feeds the DQ output to every consumer, the block's node included.
    """
    walk = Walk(graph)
    head = walk.downstream(head_inputs)
    block = {i for i, n in enumerate(walk.nodes) if n.name.startswith(scope)}
    if not block:
        return sorted(walk.names(head))
    block_out = {t for i in block for t in walk.nodes[i].output}
    block_in = {t for i in block for t in walk.nodes[i].input if t and t not in block_out}
    neighbours = set(walk.readers(block_in))
    tail = walk.downstream(block_out, avoid=block)
    return sorted(walk.names((neighbours | tail | head) - block))


def probability_matmuls(graph: onnx.GraphProto) -> list[str]:
    """MatMuls that read a Softmax output: attention probabilities times values.

    Per-tensor int8 cannot hold a probability row: its scale follows the row's largest
    entry, so the near-uniform rows of a flat attention (1 / N each, N = 442 at ViT-B-16 336)
    land on a handful of levels and A V comes out scaled. Measured on ViT-B-16 + DINO B/8
    (random init): quantizing them took CLIP's residual stream from 0.6% to 9% relative error
    in the first block and the values to 35%. They are 5% (CLIP, 442 tokens) to 16% (DINO B/8,
    1765 tokens) of a backbone's matmul work.
    """
    softmax_out = {t for n in graph.node if n.op_type == "Softmax" for t in n.output}
    return sorted(n.name for n in graph.node if n.op_type == "MatMul" and softmax_out & set(n.input))






@dataclass(frozen=True)
class Where:
    """What the rules read besides the graph: the block's node-name prefix, the stage tensors, --quantize."""

    scope: str
    stages: dict[str, str]
    region: str | None

    @property
    def head_inputs(self) -> tuple[str, ...]:
        return tuple(self.stages[n] for n in ("proxy_features", "values") if n in self.stages)


# rule name (as recorded in meta.json's fp32_nodes and printed by the CLI) -> the nodes it keeps in fp32
RULES: dict[str, Callable[[onnx.GraphProto, Where], list[str]]] = {
    "tail_and_boundary": lambda g, w: excluded_nodes(g, w.scope, w.head_inputs),
    "probability_matmuls": lambda g, w: probability_matmuls(g),
    "clip_trunk": lambda g, w: clip_trunk_nodes(g, w.stages) if w.region == "proxy" else [],
}


def fp32_rules(graph: onnx.GraphProto, where: Where) -> dict[str, list[str]]:
    """Every rule's nodes, by rule name."""
    return {name: rule(graph, where) for name, rule in RULES.items()}
