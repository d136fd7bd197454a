"""`fsa export`: the two-pass FSA forward as one static ONNX graph, plus the text graph.

Steps: build the reference (deploy formulation) -> torch.onnx (dynamo) export of a twin
that also returns every stage tensor -> onnxslim (constant folding, dead code) -> stage
tensors renamed `stage.<name>`, feedback nodes renamed `feedback/...` (stable names for
the validator's --stages and for calibration's exclusions) -> only `logits` kept as
output -> checker, shape inference, lint -> meta.json with hashes.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from fsa_deploy.contract import (
    CONTEXT_LENGTH,
    EMBEDDINGS,
    EXPORT_PRECISIONS,
    FEEDBACK_SCOPE,
    IMAGE,
    IMAGE_ONNX,
    LOGITS,
    MASK_PREFIX,
    STAGE_PREFIX,
    STAGES,
    TEXT_EMBEDDINGS,
    TEXT_ONNX,
    TOKENIZER_VOCAB,
    TOKENS,
    Role,
)
from fsa_deploy.errors import FSAError
from fsa_deploy.export.fp16_audit import Fp16Plan, export_fp16
from fsa_deploy.export.graph_walk import Walk
from fsa_deploy.export.lint import assert_lint_clean
from fsa_deploy.log import logger
from fsa_deploy.models.factory import ModelSpec, Reference, build_reference
from fsa_deploy.models.reference import FSAModel
from fsa_deploy.models.registry import Tower
from fsa_deploy.models.text import openai_templates
from fsa_deploy.runtime import artifact as A
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.schema import ExportMeta, FileRecord
from fsa_deploy.runtime.text import default_vocab_file

LOG = logger("export")
OPSET = 18
EXTERNAL_DATA_BYTES = 1_900_000_000  # protobuf's 2 GB limit, with a margin
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
assert tuple(DTYPES) == EXPORT_PRECISIONS
# stage tensors that are graph inputs (no node produces them)
INPUT_STAGES = ("image", "text_embeddings")


class Progress:
    """Numbered steps with their durations on stderr: full-size exports take minutes."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.i, self.enabled, self.t0 = total, 0, enabled, time.perf_counter()

    def step(self, what: str) -> None:
        self.i += 1
        if self.enabled:
            LOG.info(f"[{self.i}/{self.total}] {what} (+{time.perf_counter() - self.t0:.1f}s)")


class StagesOutput(nn.Module):
    """The crop forward returning logits and every stage tensor (in STAGES order)."""

    def __init__(self, model: FSAModel, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        stages: dict[str, torch.Tensor] = {}
        logits = self.model.run(image, text, stages)
        return (logits, *(stages[n] for n in self.names))


class TextTower(nn.Module):
    """tokens int32 [T, L], L <= 77 -> embeddings float32 [T, D]: open_clip's encode_text with the
    positional embedding and the causal mask cut to L. The tower is causal and pools at the end
    token (the highest id), so a prompt's embedding does not depend on the padding after it: the
    runtime sends the batch's longest prompt, not 77 (tests/test_export.py checks the equality)."""

    def __init__(self, clip: Tower):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool  # noqa: PLC0415 - open_clip: heavy, imported where it is used

        clip, ids = self.clip, tokens.long()
        n = ids.shape[1]
        x = clip.token_embedding(ids) + clip.positional_embedding[:n]
        x = clip.transformer(x, attn_mask=clip.attn_mask[:n, :n])
        x = text_global_pool(clip.ln_final(x), ids, clip.text_pool_type)
        if isinstance(clip.text_projection, nn.Linear):
            return clip.text_projection(x).float()
        return (x @ clip.text_projection).float()


def stage_names(ref: Reference) -> list[str]:
    """The stage tensors this model produces, besides the graph inputs and `logits`."""
    probe: dict[str, torch.Tensor] = {}
    s = ref.spec.crop
    text = torch.nn.functional.normalize(torch.ones(1, ref.model.embed_dim), dim=-1)
    with torch.no_grad():
        ref.model.run(torch.zeros(1, 3, s, s), text, probe)
    return [n for n in STAGES if n in probe and n not in (*INPUT_STAGES, "logits")]


def _torch_export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic: dict[str, dict[int, Any]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gate.produce(path, torch.onnx.export, module, args, input_names=input_names, output_names=output_names,
                     dynamic_shapes=dynamic, dynamo=True, opset_version=OPSET, optimize=True, verbose=False,
                     external_data=True)


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and dead-code removal with onnxslim (keeps names of graph outputs)."""
    import onnxslim  # noqa: PLC0415 - onnxslim: heavy, imported where it is used

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(model, no_shape_infer=False)


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for vi in (*graph.output, *graph.value_info):
        if vi.name == old:
            vi.name = new


def name_nodes(graph: onnx.GraphProto, stages: list[str]) -> None:
    """Stable node names: `feedback/<Op>_<i>` for steps 8-13, `<Op>_<i>` elsewhere."""
    if "attn_new" in stages:
        inputs = [STAGE_PREFIX + s for s in ("attn_out1", "values", "attn_proxy") if s in stages]
        walk = Walk(graph)
        block = walk.upstream([STAGE_PREFIX + "attn_new"]) - walk.upstream(inputs)
    else:
        block = set()
    counts: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        scope = FEEDBACK_SCOPE if i in block else ""
        key = scope + node.op_type
        node.name = f"{key}_{counts.get(key, 0)}"
        counts[key] = counts.get(key, 0) + 1


def _infinite_constants(graph: onnx.GraphProto) -> set[str]:
    arrays = [(t.name, t) for t in graph.initializer] + [
        (n.output[0], a.t) for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    out = set()
    for name, t in arrays:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            a = numpy_helper.to_array(t)
            if a.size and np.isinf(a).all():
                out.add(name)
    return out


def name_masks(graph: onnx.GraphProto) -> list[str]:
    """The masks the model builds on purpose (models.fsa's masked_fill with +-inf: a Where with an infinite
    constant branch) are renamed `mask.<i>`: the fp16 export's non-finite check allows +-inf in them only
    (export.fp16_audit.measure). Returns the new names."""
    inf = _infinite_constants(graph)
    outputs = {o.name for o in graph.output}
    olds = [n.output[0] for n in graph.node if n.op_type == "Where" and set(n.input[1:]) & inf
            and not n.output[0].startswith(STAGE_PREFIX) and n.output[0] not in outputs]
    for i, old in enumerate(olds):
        _rename_tensor(graph, old, f"{MASK_PREFIX}{i}")
    return [f"{MASK_PREFIX}{i}" for i in range(len(olds))]


def finish_image_graph(model: onnx.ModelProto, stages: list[str]) -> dict[str, str]:
    """Rename stage outputs, keep `logits` as the only output; returns stage -> tensor name."""
    graph = model.graph
    outputs = [o.name for o in graph.output]
    mapping = {}
    for name, tensor in zip(stages, outputs[1:]):
        new = STAGE_PREFIX + name
        _rename_tensor(graph, tensor, new)
        mapping[name] = new
    _rename_tensor(graph, graph.output[0].name, LOGITS)
    name_masks(graph)
    name_nodes(graph, stages)
    keep = [o for o in graph.output if o.name == LOGITS]
    del graph.output[:]
    graph.output.extend(keep)
    return mapping


def save_onnx(model: onnx.ModelProto, path: Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> None:
    """Save with external data past protobuf's 2 GB limit (ViT-H); checker and shape inference first.
    `external_data_bytes` lower than the default forces the external-data path on a small model (tests)."""
    large = model.ByteSize() > external_data_bytes
    if large:
        gate.produce(path, onnx.save_model, model, save_as_external_data=True, all_tensors_to_one_file=True,
                     location=path.name + ".data")
        onnx.checker.check_model(str(path))
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred")
        gate.unlink(str(path) + ".inferred")
    else:
        onnx.checker.check_model(model, full_check=True)
        gate.produce(path, onnx.save_model, onnx.shape_inference.infer_shapes(model, strict_mode=True))


def export_image(ref: Reference, work: Path, precision: str, max_batch: int,
                 external_data_bytes: int = EXTERNAL_DATA_BYTES, fp16: Any = None) -> tuple[dict[str, str], int]:
    """fp16: the fp32 graph first, then the fp16 range audit's islands and AutoCast (export.fp16_audit;
    `fp16` is its Fp16Plan, which receives the record for meta.json)."""
    model = ref.model
    stages = stage_names(ref)
    s = ref.spec.crop
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    classes = torch.export.Dim("classes", min=1, max=16384)
    raw = work / "raw.onnx"
    example = (torch.rand(2, 3, s, s) * 255, torch.nn.functional.normalize(torch.randn(3, model.embed_dim), dim=-1))
    _torch_export(StagesOutput(model, stages), example, raw, [IMAGE, TEXT_EMBEDDINGS],
                  [LOGITS, *(STAGE_PREFIX + n for n in stages)], {"image": {0: batch}, "text": {0: classes}})
    graph = _slim(onnx.load(str(raw)))
    for f in work.glob("raw.onnx*"):
        gate.unlink(f)
    mapping = finish_image_graph(graph, stages)
    graph.producer_name, graph.doc_string = "fsa-deploy", "FSA crop forward (docs/METHOD.md steps 1-15)"
    save_onnx(graph, work / IMAGE_ONNX, external_data_bytes)
    if precision == "fp16":
        plan = fp16 if fp16 is not None else Fp16Plan()
        return mapping, export_fp16(ref, work / IMAGE_ONNX, mapping, FEEDBACK_SCOPE, plan, external_data_bytes)
    return mapping, len(graph.graph.node)


def export_text(ref: Reference, work: Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> int:
    tokens = torch.export.Dim("prompts", min=1, max=4096)
    length = torch.export.Dim("length", min=2, max=CONTEXT_LENGTH)
    raw = work / "text.raw.onnx"
    example = (torch.zeros(2, CONTEXT_LENGTH, dtype=torch.int32),)
    _torch_export(TextTower(ref.clip).eval(), example, raw, [TOKENS], [EMBEDDINGS],
                  {"tokens": {0: tokens, 1: length}})
    graph = _slim(onnx.load(str(raw)))
    for f in work.glob("text.raw.onnx*"):
        gate.unlink(f)
    _rename_tensor(graph.graph, graph.graph.output[0].name, EMBEDDINGS)
    save_onnx(graph, work / TEXT_ONNX, external_data_bytes)
    return len(graph.graph.node)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "open_clip_torch", "timm", "onnx", "onnxscript", "onnxslim", "onnxruntime", "fsa-deploy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


def build_meta(spec: ModelSpec, ref: Reference, precision: str, mapping: dict[str, str]) -> ExportMeta:
    m = ref.model
    return ExportMeta(
        # the selection, with the file, sha256 and layout each checkpoint was recognised as
        **{**spec.describe(), **ref.weights_record()},
        precision=precision,
        feedback_precision="fp32",
        opset=OPSET,
        clip_grid=(m.grid, m.grid),
        grid=(m.out_grid[0], m.out_grid[1]),
        patch=m.patch,
        width=m.width,
        heads=m.heads,
        embed_dim=m.embed_dim,
        logit_scale=spec.hp.logit_scale,
        templates=tuple(openai_templates()),
        context_length=CONTEXT_LENGTH,
        stages=mapping,
        feedback_scope=FEEDBACK_SCOPE,
        versions=library_versions(),
    )


def export_artifact(spec: ModelSpec, out: str | Path, precision: str = "fp32", overwrite: bool = False,
                    progress: bool = True, max_batch: int = 64, lint: bool = True,
                    external_data_bytes: int = EXTERNAL_DATA_BYTES, fp16: Any = None) -> A.Artifact:
    """Write the artefact folder for `spec` at `out`; nothing is left there if a step fails.
    Graphs over `external_data_bytes` keep their weights in a `.data` file beside them.
    `fp16`: export.fp16_audit.Fp16Plan (calibration images, islands on/off) for --precision fp16."""
    if precision not in EXPORT_PRECISIONS:
        raise FSAError(f"--precision {precision!r}: choose from {', '.join(EXPORT_PRECISIONS)}")
    gate.check_target(out, overwrite)  # before minutes of work
    steps = Progress(6 if lint else 5, progress)
    steps.step(f"building {spec.model}" + (f" + {spec.proxy}" if spec.attention == "proxy" else "")
               + f" ({spec.attention}, {'FSA' if spec.fsa else 'no FSA'}, crop {spec.crop})")
    ref = build_reference(spec, "deploy")
    with gate.staging_folder(out, overwrite) as work, torch.no_grad():
        steps.step(f"exporting {IMAGE_ONNX} ({precision}; dynamic batch and classes)")
        if precision == "fp16" and fp16 is None:
            fp16 = Fp16Plan()
        mapping, n_image = export_image(ref, work, precision, max_batch, external_data_bytes, fp16)
        steps.step(f"exporting {TEXT_ONNX}")
        n_text = export_text(ref, work, external_data_bytes)
        steps.step("writing meta.json")
        art = A.Artifact(work, build_meta(spec, ref, precision, mapping).to_json())
        art.record(IMAGE_ONNX, FileRecord(role=Role.IMAGE, precision=precision, nodes=n_image,
                                          fp16_audit=fp16.record if precision == "fp16" and fp16.record else None))
        art.record(TEXT_ONNX, FileRecord(role=Role.TEXT, precision="fp32", nodes=n_text))
        # the tokenizer's merges travel with the artefact: the runtime needs no open_clip
        gate.copy(default_vocab_file(), work / TOKENIZER_VOCAB, keep=False)
        art.record(TOKENIZER_VOCAB, FileRecord(role=Role.TOKENIZER))
        for extra in sorted(work.glob("*.data")):
            art.record(extra.name, FileRecord(role=Role.EXTERNAL_DATA))
        art.save()
        if lint:
            steps.step("linting against the ONNX parser rules of TensorRT 10, 11 and TensorRT-RTX")

            for name in (IMAGE_ONNX, TEXT_ONNX):
                assert_lint_clean(str(work / name))
        steps.step(f"done: {out}")
    return A.Artifact.load(out)


def describe(art: A.Artifact) -> str:
    files = {k: v.bytes for k, v in art.file_records().items()}
    return json.dumps({"artifact": str(art.root), "files": files})
