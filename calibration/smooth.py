"""Channel smoothing before int8 / fp8: a LayerNorm's per-channel spread moves into the next MatMul's weights.

Why: trained ViTs' post-LayerNorm activations differ per channel by tens of times (RepQ-ViT, ICCV
2023; `--real-stats` reproduces it), and activations are quantized per tensor: the few wide
channels set the scale and the others fall onto a handful of levels (tiny `--real-stats`, proxy in
int8: 98.8% pixels, mIoU 0.61). The fix is in the graph, not the tolerance: for each
LayerNormalization whose output feeds only MatMuls with constant weights, divide its gain and
bias by s_c and multiply the weights' input rows by s_c, with s_c = sqrt(absmax_c(X) / absmax_c(W))
(SmoothQuant, Xiao et al. 2023, alpha 0.5), normalised to a median of 1. The function is the same
in exact arithmetic; the activation's channels come out balanced, the weights (quantized per
output channel) take the spread. Only LayerNorms whose measured spread passes SPREAD_MIN are
touched: a graph without the pathology is quantized as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fsa_deploy.export.graph_probe import ort_session, probe_options, with_channel_absmax_outputs
from fsa_deploy.export.graph_walk import Walk
from fsa_deploy.runtime import gate

SPREAD_MIN = 8.0  # largest channel absmax / median channel absmax that calls for smoothing


def channel_absmax(model, names: list[str], feeds: list[dict[str, np.ndarray]],
                   min_channels: int = 1) -> dict[str, np.ndarray]:
    """Each float tensor of `names` of rank >= 2 with >= `min_channels` channels: its absmax per last-axis
    channel over every feed, from a copy of `model` run as exported with the per-channel maxima reduced
    in the graph (export/graph_probe.py: the tensors themselves are never outputs)."""
    import onnx


    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probes = with_channel_absmax_outputs(probe, names)
    sess = ort_session(probe, probe_options())  # past 2 GB (ViT-H) too
    outs = [o for t in probes.absmax for o in (probes.absmax[t], probes.rank[t], probes.kind[t])]
    absmax: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = dict(zip(outs, sess.run(outs, feed)))
        for t, o in probes.absmax.items():
            dtype, rank = values[probes.kind[t]].dtype, int(values[probes.rank[t]][0])
            a = values[o]
            if rank < 2 or a.shape[-1] < min_channels or not np.issubdtype(dtype, np.floating):
                continue
            a = a.astype(dtype)  # the tensor's own type, as read whole before
            absmax[t] = a if t not in absmax else np.maximum(absmax[t], a)
    return absmax


def has_external_data(path: Path) -> bool:
    """Whether the graph at `path` keeps weights in a file beside it (past protobuf's 2 GB: ViT-H)."""
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load(str(path), load_external_data=False).graph.initializer)


def save_like(model, dst: Path, external: bool) -> None:
    """`model` at `dst`, its weights in `dst.name + ".data"` beside it when the source had external data."""
    import onnx

    if external:
        gate.produce(dst, onnx.save_model, model, save_as_external_data=True, all_tensors_to_one_file=True,
                     location=dst.name + ".data", size_threshold=0)
    else:
        gate.produce(dst, onnx.save, model)


def smooth(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> int:
    """Write the smoothed graph of `src` to `dst` (same tensor and node names; external data beside it when
    `src` has them); returns how many LayerNorms were smoothed (0: `dst` is an unchanged copy)."""
    import onnx
    from onnx import numpy_helper

    external = has_external_data(src)
    model = onnx.load(str(Path(src).resolve()))  # calibrate links the artefact's graph: its data lie beside the target
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    walk = Walk(g)
    uses = {name: len(walk.consumers_of(name)) for name in inits}
    cands = []
    for n in g.node:
        if n.op_type != "LayerNormalization" or len(n.input) < 3:
            continue
        readers = walk.consumers_of(n.output[0])
        if readers and all(r.op_type == "MatMul" and r.input[0] == n.output[0] and r.input[1] in inits
                           and uses[r.input[1]] == 1 for r in readers) \
                and n.input[1] in inits and n.input[2] in inits and uses[n.input[1]] == 1 and uses[n.input[2]] == 1:
            cands.append((n, readers))
    if not cands:
        save_like(model, dst, external)
        return 0
    absmax = channel_absmax(model, [n.output[0] for n, _ in cands], feeds)
    done = 0
    for n, readers in cands:
        x = absmax.get(n.output[0])
        if x is None or x.max() < SPREAD_MIN * np.median(x):
            continue
        ws = [numpy_helper.to_array(inits[r.input[1]]) for r in readers]
        w = np.max([np.abs(m).max(axis=1) for m in ws], axis=0)
        s = np.sqrt(np.maximum(x, 1e-8) / np.maximum(w, 1e-8))
        s = (s / np.median(s)).astype(np.float32)
        for idx, arr in ((1, numpy_helper.to_array(inits[n.input[1]])), (2, numpy_helper.to_array(inits[n.input[2]]))):
            inits[n.input[idx]].CopyFrom(numpy_helper.from_array((arr / s).astype(arr.dtype), n.input[idx]))
        for r, m in zip(readers, ws):
            inits[r.input[1]].CopyFrom(numpy_helper.from_array((m * s[:, None]).astype(m.dtype), r.input[1]))
        done += 1
    save_like(model, dst, external)
    return done


OUTLIER_OPS = ("MatMul", "Add", "LayerNormalization")  # what ModelOpt's placement quantizes on a ViT's stream


def outlier_matmuls(path: Path, feeds: list[dict[str, np.ndarray]], spread: float = SPREAD_MIN) -> list[str]:
    """MatMuls (constant weights), Adds and LayerNorms whose activation input still has one channel
    `spread` x the median channel: kept in fp32, islands for the outlier channels (the residual stream
    with massive activations, the MLP input where one neuron carries them); per-tensor int8 would put
    every other channel on a few levels."""
    import onnx

    model = onnx.load(str(Path(path).resolve()))  # onnx reads no external data through a link
    inits = {t.name for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in OUTLIER_OPS
             and (n.op_type != "MatMul" or n.input[1] in inits)]
    inputs = {n.name: [t for t in (n.input[:1] if n.op_type != "Add" else n.input) if t and t not in inits]
              for n in nodes}
    absmax = channel_absmax(model, sorted({t for ts in inputs.values() for t in ts}), feeds, min_channels=8)
    wide = {t for t, a in absmax.items() if a.max() >= spread * max(float(np.median(a)), 1e-12)}
    return sorted(n.name for n in nodes if any(t in wide for t in inputs[n.name]))
