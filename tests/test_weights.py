"""Real checkpoint files load offline as their authors ship them, or exit 2 in one line.

Each published layout is made here at tiny size: SAM with the `segment-anything` package's own
modules, OpenAI's TorchScript archives with open_clip's CLIP class and torch.jit, open_clip's own
files from open_clip's model; DINO, DINOv2 and MAE (not on PyPI) from their official repositories'
parameter names, kept below as data. Nothing reaches the network: the hub is offline.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import pytest
import torch
from conftest import CROP, photos

from fsa_deploy.cli import main
from fsa_deploy.models.clip import _open_clip
from fsa_deploy.models.factory import ModelSpec, build_reference, default_hp, spec_from_meta
from fsa_deploy.models.weights import POS_INTERP, Weights, resample_pos_embed_official
from fsa_deploy.runtime.artifact import sha256_file

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:FutureWarning")  # the test makers
TINY = dict(embed_dim=64, depth=2, num_heads=2)  # registry.py's tiny-* proxies

# --- official parameter names (facebookresearch/dino vision_transformer.py; dinov2 models/
# vision_transformer.py + layers/{block,layer_scale,attention,mlp,patch_embed}.py; mae models_vit.py).
# name template -> shape template: D width, H mlp hidden, P patch, G grid side, R registers.
VIT_TOP = {"cls_token": "1,1,D", "pos_embed": "1,1+G*G,D", "patch_embed.proj.weight": "D,3,P,P",
           "patch_embed.proj.bias": "D", "norm.weight": "D", "norm.bias": "D"}
VIT_BLOCK = {"blocks.{i}.norm1.weight": "D", "blocks.{i}.norm1.bias": "D",
             "blocks.{i}.attn.qkv.weight": "3*D,D", "blocks.{i}.attn.qkv.bias": "3*D",
             "blocks.{i}.attn.proj.weight": "D,D", "blocks.{i}.attn.proj.bias": "D",
             "blocks.{i}.norm2.weight": "D", "blocks.{i}.norm2.bias": "D",
             "blocks.{i}.mlp.fc1.weight": "H,D", "blocks.{i}.mlp.fc1.bias": "H",
             "blocks.{i}.mlp.fc2.weight": "D,H", "blocks.{i}.mlp.fc2.bias": "D"}
DINOV2_TOP = {"mask_token": "1,D"}
DINOV2_REG = {"register_tokens": "1,R,D"}
DINOV2_BLOCK = {"blocks.{i}.ls1.gamma": "D", "blocks.{i}.ls2.gamma": "D"}
# family: (top-level tables, per-block tables, container key)
OFFICIAL = {
    "dino": ((VIT_TOP,), (VIT_BLOCK,), None),
    "mae": ((VIT_TOP,), (VIT_BLOCK,), "model"),
    "dinov2": ((VIT_TOP, DINOV2_TOP), (VIT_BLOCK, DINOV2_BLOCK), None),
    "dinov2-reg": ((VIT_TOP, DINOV2_TOP, DINOV2_REG), (VIT_BLOCK, DINOV2_BLOCK), None),
}


def official_vit(family: str, dim: int = 64, depth: int = 2, patch: int = 8, grid: int = 28, seed: int = 0) -> dict:
    """A state dict with the official names and shapes of `family`, random values."""
    tops, blocks, container = OFFICIAL[family]
    g = torch.Generator().manual_seed(seed)
    v = dict(D=dim, H=4 * dim, P=patch, G=grid, R=4)
    shape = lambda t: tuple(int(eval(p, {}, v)) for p in t.split(","))  # eval of constant templates
    # N(0, 0.02^2), as ViT initialisations draw. Unit-variance norm biases make every patch's proxy
    # feature nearly the same: ProxyCLIP's S0 - beta * mean(S0) is then < 0 on whole rows, the row is
    # all -inf (docs/METHOD.md, as the official code) and its softmax NaN; validate fails on that.
    randn = lambda s: torch.randn(shape(s), generator=g) * 0.02
    out = {k: randn(s) for t in tops for k, s in t.items()}
    for i in range(depth):
        out.update({k.format(i=i): randn(s) for t in blocks for k, s in t.items()})
    return {container: out} if container else out


def tiny_sam():
    """segment_anything's Sam at registry.py's tiny-sam size (256 input, depth 2, global block 1, neck 32)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    img, patch, out = 256, 16, 32
    return Sam(
        image_encoder=ImageEncoderViT(img_size=img, patch_size=patch, embed_dim=64, depth=2, num_heads=2,
                                      mlp_ratio=4, out_chans=out, qkv_bias=True, use_rel_pos=True,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), window_size=14,
                                      global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=out, image_embedding_size=(img // patch, img // patch),
                                     input_image_size=(img, img), mask_in_chans=8),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=out, iou_head_depth=3,
                                 iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=out, mlp_dim=64, num_heads=2)),
    )


def timm_file(path: Path, timm_name: str, seed: int, **kw) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = timm.create_model(timm_name, pretrained=False, num_classes=0, **TINY, **kw)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def openai_archive(path: Path, seed: int) -> None:
    """An OpenAI-style TorchScript archive: open_clip's CLIP (QuickGELU), fp16, scripted, with OpenAI's
    three integer entries in the state dict and the attention mask kept out of it."""
    open_clip = _open_clip()
    torch.manual_seed(seed)
    net = open_clip.create_model("tiny", pretrained=None, force_quick_gelu=True).eval()
    for key, val in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(net, key):
            delattr(net, key)
        net.register_buffer(key, torch.tensor(val))
    mask = net.attn_mask
    del net.attn_mask
    net.attn_mask = mask  # a plain attribute, as in OpenAI's files
    open_clip.model.convert_weights_to_lp(net, torch.float16)
    torch.jit.script(net).save(str(path))


def hub_cache(root: Path, repo: str, files: dict[str, Path | dict]) -> None:
    """A Hugging Face hub cache folder (models--ORG--NAME/{refs/main, snapshots/REV/...})."""
    rev = "0" * 40
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "snapshots" / rev).mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    for name, src in files.items():
        dst = base / "snapshots" / rev / name
        if isinstance(src, dict):
            dst.write_text(json.dumps(src))
        else:
            shutil.copy(src, dst)


def truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    f = {n: d / n for n in (
        "dino_vitbase8_pretrain.pth", "dinov2_vitb14_reg4_pretrain.pth", "dinov2_vitb14_pretrain.pth",
        "mae_pretrain_vit_base.pth", "sam_vit_b_01ec64.pth", "dino.model.safetensors", "dinov2.model.safetensors",
        "sam.model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.safetensors", "epoch_1.pt",
        "ViT-B-16.pt")}
    for name, fam, patch, grid, seed in (("dino_vitbase8_pretrain.pth", "dino", 8, 28, 1),
                                         ("dinov2_vitb14_reg4_pretrain.pth", "dinov2-reg", 14, 37, 2),
                                         ("dinov2_vitb14_pretrain.pth", "dinov2", 14, 37, 3),
                                         ("mae_pretrain_vit_base.pth", "mae", 16, 14, 4)):
        torch.save(official_vit(fam, patch=patch, grid=grid, seed=seed), f[name])
    torch.manual_seed(5)
    torch.save(tiny_sam().state_dict(), f["sam_vit_b_01ec64.pth"])
    timm_file(f["dino.model.safetensors"], "vit_base_patch8_224.dino", 6)
    timm_file(f["dinov2.model.safetensors"], "vit_base_patch14_reg4_dinov2", 7, img_size=518)
    timm_file(f["sam.model.safetensors"], "samvit_base_patch16", 8, img_size=256, global_attn_indexes=(1,),
              neck_chans=32)
    from safetensors.torch import save_file

    torch.manual_seed(9)
    sd = _open_clip().create_model("tiny", pretrained=None).state_dict()
    torch.save(sd, f["open_clip_pytorch_model.bin"])
    save_file({k: v.contiguous() for k, v in sd.items()}, str(f["open_clip_model.safetensors"]))
    torch.save({"epoch": 1, "name": "tiny", "state_dict": {"module." + k: v for k, v in sd.items()}}, f["epoch_1.pt"])
    openai_archive(f["ViT-B-16.pt"], 10)
    tiny_cfg = json.loads((Path(__file__).parents[1] / "models" / "configs" / "tiny.json").read_text())
    f["hub"] = d / "hub"
    hub_cache(f["hub"], "fsa-test/tiny-clip", {"open_clip_config.json": {"model_cfg": tiny_cfg},
                                               "open_clip_model.safetensors": f["open_clip_model.safetensors"]})
    hub_cache(f["hub"], "fsa-test/tiny-clip-quickgelu",
              {"open_clip_config.json": {"model_cfg": dict(tiny_cfg, quick_gelu=True)},
               "open_clip_pytorch_model.bin": f["open_clip_pytorch_model.bin"]})
    return f


def _load(obj_path: Path) -> dict[str, torch.Tensor]:
    if obj_path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(obj_path))
    if obj_path.name == "ViT-B-16.pt":
        return {k: v.float() for k, v in torch.jit.load(str(obj_path)).state_dict().items()}
    obj = torch.load(obj_path, weights_only=True)
    obj = obj.get("model", obj.get("state_dict", obj))
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _grid(n: int) -> tuple[int, int]:
    return (CROP // n, CROP // n)


# proxy rows: file, --proxy, the layout meta.json must name, model key -> the file's tensor after mapping
PROXY_ROWS = [
    ("dino_vitbase8_pretrain.pth", "tiny-dino", "dino-release", {
        "cls_token": lambda s: s["cls_token"], "blocks.1.attn.qkv.weight": lambda s: s["blocks.1.attn.qkv.weight"],
        "norm.weight": lambda s: s["norm.weight"],
        "pos_embed": lambda s: resample_pos_embed_official(s["pos_embed"], _grid(8), POS_INTERP["dino"])}),
    ("dino.model.safetensors", "tiny-dino", "timm-vit", {
        "blocks.0.attn.proj.weight": lambda s: s["blocks.0.attn.proj.weight"],
        "pos_embed": lambda s: resample_pos_embed_official(s["pos_embed"], _grid(8), POS_INTERP["dino"])}),
    ("dinov2_vitb14_reg4_pretrain.pth", "tiny-dinov2", "dinov2-reg-release", {
        "reg_token": lambda s: s["register_tokens"],
        "cls_token": lambda s: s["cls_token"] + s["pos_embed"][:, 0],  # timm's no_embed_class form
        "blocks.1.ls2.gamma": lambda s: s["blocks.1.ls2.gamma"],
        "pos_embed": lambda s: resample_pos_embed_official(s["pos_embed"], _grid(14), POS_INTERP["dinov2"])[:, 1:]}),
    ("dinov2.model.safetensors", "tiny-dinov2", "timm-dinov2-reg", {"reg_token": lambda s: s["reg_token"]}),
    ("dinov2_vitb14_pretrain.pth", "tiny-dinov2-noreg", "dinov2-release", {
        "cls_token": lambda s: s["cls_token"], "blocks.0.ls1.gamma": lambda s: s["blocks.0.ls1.gamma"],
        "pos_embed": lambda s: resample_pos_embed_official(s["pos_embed"], _grid(14), POS_INTERP["dinov2-noreg"])}),
    ("mae_pretrain_vit_base.pth", "tiny-mae", "mae-release", {
        "norm.bias": lambda s: s["norm.bias"],
        "pos_embed": lambda s: resample_pos_embed_official(s["pos_embed"], _grid(16), POS_INTERP["mae"])}),
    ("sam_vit_b_01ec64.pth", "tiny-sam", "sam-release", {
        "blocks.0.mlp.fc1.weight": lambda s: s["image_encoder.blocks.0.mlp.lin1.weight"],
        "blocks.1.attn.rel_pos_h": lambda s: s["image_encoder.blocks.1.attn.rel_pos_h"],
        "neck.3.weight": lambda s: s["image_encoder.neck.3.weight"],
        "pos_embed": lambda s: s["image_encoder.pos_embed"]}),
    ("sam.model.safetensors", "tiny-sam", "timm-samvit", {"neck.0.weight": lambda s: s["neck.0.weight"]}),
]
CLIP_KEYS = ("visual.conv1.weight", "visual.transformer.resblocks.1.attn.in_proj_weight", "text_projection",
             "logit_scale", "token_embedding.weight", "ln_final.bias")
# CLIP rows: file, weights, layout, QuickGELU
CLIP_ROWS = [
    ("open_clip_pytorch_model.bin", "checkpoint", "open_clip", False),
    ("open_clip_model.safetensors", "checkpoint", "open_clip", False),
    ("epoch_1.pt", "checkpoint", "open_clip", False),
    ("ViT-B-16.pt", "checkpoint", "openai-torchscript", True),
    ("open_clip_model.safetensors", "hf-hub:fsa-test/tiny-clip", "open_clip", False),
    ("open_clip_pytorch_model.bin", "hf-hub:fsa-test/tiny-clip-quickgelu", "open_clip", True),
]


def _spec(files, clip_row=None, proxy_row=None, attention="proxy") -> ModelSpec:
    if clip_row is None:
        weights = Weights(seed=0)
    elif clip_row[1] == "checkpoint":
        weights = Weights(checkpoint=str(files[clip_row[0]]))
    else:
        weights = Weights(pretrained=clip_row[1], cache_dir=str(files["hub"]))
    proxy = proxy_row[1] if proxy_row else "tiny-dino"
    return ModelSpec(model="tiny", weights=weights, attention=attention, proxy=proxy,
                     proxy_checkpoint=str(files[proxy_row[0]]) if proxy_row else None, crop=CROP,
                     hp=default_hp("tiny", proxy))


@pytest.mark.parametrize("row", PROXY_ROWS, ids=[f"{r[0]}->{r[1]}" for r in PROXY_ROWS])
def test_proxy_file_loads_as_published(files, row):
    name, proxy, layout, checks = row
    ref = build_reference(_spec(files, proxy_row=row))
    rec = ref.weights_record()["proxy_weights"]
    assert (rec["file"], rec["sha256"], rec["layout"]) == (name, sha256_file(files[name]), layout)
    assert rec["loaded_tensors"] == len(ref.model.proxy.net.state_dict())
    src, got = _load(files[name]), ref.model.proxy.net.state_dict()
    for key, expect in checks.items():
        assert torch.equal(got[key], expect(src)), key
    if proxy != "tiny-sam":  # every other file is at its training grid, not the crop's: resized, recorded
        assert rec["pos_embed"]["to_grid"] == list(ref.model.proxy.grid), rec


def test_sam_release_matches_segment_anything(files):
    """timm's samvit with the SAM release file computes what segment_anything's image encoder does."""
    ref = build_reference(_spec(files, proxy_row=PROXY_ROWS[6]))
    sam = tiny_sam().eval()
    sam.load_state_dict(torch.load(files["sam_vit_b_01ec64.pth"], weights_only=True))
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = (sam.image_encoder(x) - ref.model.proxy.net.forward_features(x)).abs().max().item()
    print(f"SAM tiny: segment_anything vs timm samvit max |d| = {d:.1e}")
    assert d < 1e-4


@pytest.mark.parametrize("row", CLIP_ROWS, ids=[f"{r[0]}:{r[1]}" for r in CLIP_ROWS])
def test_clip_file_loads_as_published(files, row):
    name, _, layout, quick_gelu = row
    ref = build_reference(_spec(files, clip_row=row, attention="qk"))
    rec = ref.weights_record()["weights"]
    assert (rec["file"], rec["sha256"], rec["layout"], rec["quick_gelu"]) == (
        name, sha256_file(files[name]), layout, quick_gelu)
    acts = {type(m).__name__ for m in ref.clip.modules() if "GELU" in type(m).__name__}
    assert acts == ({"QuickGELU"} if quick_gelu else {"GELU"})
    src, got = _load(files[name]), ref.clip.state_dict()
    for key in CLIP_KEYS:
        assert got[key].dtype == torch.float32 and torch.equal(got[key], src[key].float()), key
    again = build_reference(spec_from_meta(ref.spec.describe()))  # what `fsa validate` rebuilds from meta.json
    assert torch.equal(again.clip.state_dict()["text_projection"], got["text_projection"])


def test_export_then_validate(files, tmp_path, capsys):
    """`fsa export` of OpenAI's TorchScript CLIP + DINOv2's release file, then `fsa validate` passes."""
    out = tmp_path / "art"
    rc = main(["export", "--model", "tiny", "--checkpoint", str(files["ViT-B-16.pt"]), "--proxy", "tiny-dinov2",
               "--proxy-checkpoint", str(files["dinov2_vitb14_reg4_pretrain.pth"]), "--crop", str(CROP),
               "--out", str(out), "--quiet", "--max-batch", "4"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    w, pw = meta["weights"], meta["proxy_weights"]
    assert (w["file"], w["layout"], w["quick_gelu"]) == ("ViT-B-16.pt", "openai-torchscript", True)
    assert w["sha256"] == sha256_file(files["ViT-B-16.pt"])
    assert (pw["file"], pw["layout"]) == ("dinov2_vitb14_reg4_pretrain.pth", "dinov2-reg-release")
    assert pw["sha256"] == sha256_file(files["dinov2_vitb14_reg4_pretrain.pth"])
    assert pw["pos_embed"]["from_grid"] == [37, 37] and pw["pos_embed"]["to_grid"] == [8, 8]
    assert pw["pos_embed"]["antialias"] is True and pw["pos_embed"]["offset"] == 0.0
    capsys.readouterr()
    rc = main(["validate", str(out), "--images", photos()[0], "--batch", "4"])
    text = capsys.readouterr().out
    assert rc == 0 and "PASSED" in text, text


def _refused(capsys, args: list[str], *needles: str) -> str:
    capsys.readouterr()
    rc = main([*args, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


BAD_PROXY = [  # (file maker, --proxy, what the one line must say)
    (lambda f, d: f["sam_vit_b_01ec64.pth"], "tiny-dino", ("sam-release",)),
    (lambda f, d: f["dinov2_vitb14_reg4_pretrain.pth"], "tiny-dino", ("dinov2-reg-release", "4 registers")),
    (lambda f, d: f["dinov2_vitb14_pretrain.pth"], "tiny-dinov2", ("dinov2-release",)),
    (lambda f, d: f["open_clip_pytorch_model.bin"], "tiny-dino", ("open_clip",)),
    # DINO ViT-B/16 has MAE's architecture: only the container tells them apart
    (lambda f, d: _save(d / "dino16.pth", official_vit("dino", patch=16, grid=14)), "tiny-mae", ("dino-release",)),
    # timm would resample a patch-8 kernel into a patch-16 model silently
    (lambda f, d: f["dino.model.safetensors"], "tiny-mae", ("patch_embed.proj.weight (64, 3, 8, 8)!=(64, 3, 16, 16)",)),
    (lambda f, d: _save(d / "dim32.pth", official_vit("dino", dim=32)), "tiny-dino", ("shape mismatch", "dim 32")),
    (lambda f, d: _save(d / "depth3.pth", official_vit("dino", depth=3)), "tiny-dino", ("12 unexpected: blocks.2.",)),
    (lambda f, d: _save(d / "no_norm.pth", _without(official_vit("dino"), "norm.weight")), "tiny-dino",
     ("1 missing: norm.weight",)),
    (lambda f, d: _save(d / "junk.pth", {"foo.weight": torch.zeros(3)}), "tiny-dino", ("unrecognised layout",)),
    (lambda f, d: truncate(f["dino_vitbase8_pretrain.pth"], d / "cut.pth"), "tiny-dino", ("truncated",)),
    (lambda f, d: truncate(f["dino.model.safetensors"], d / "cut.safetensors"), "tiny-dino", ("truncated",)),
    (lambda f, d: truncate(f["sam_vit_b_01ec64.pth"], d / "cut_sam.pth", 0.9), "tiny-sam", ("truncated",)),
]


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("i", range(len(BAD_PROXY)))
def test_wrong_or_truncated_proxy_file_exits_2_in_one_line(files, tmp_path, capsys, i):
    make, proxy, needles = BAD_PROXY[i]
    path = make(files, tmp_path)
    err = _refused(capsys, ["export", "--model", "tiny", "--random-init", "--proxy", proxy, "--proxy-checkpoint",
                            str(path), "--crop", str(CROP), "--out", str(tmp_path / "art")], str(path), *needles)
    print(err)
    assert not (tmp_path / "art").exists()


def test_wrong_or_truncated_clip_file_exits_2_in_one_line(files, tmp_path, capsys):
    base = ["export", "--model", "tiny", "--proxy", "tiny-dino", "--crop", str(CROP), "--out", str(tmp_path / "a")]
    print(_refused(capsys, base + ["--checkpoint", str(files["dino_vitbase8_pretrain.pth"])],
                   "does not fit tiny", "missing", "dino-release"))
    cut = truncate(files["open_clip_pytorch_model.bin"], tmp_path / "cut.bin")
    print(_refused(capsys, base + ["--checkpoint", str(cut)], "truncated"))
    cut = truncate(files["ViT-B-16.pt"], tmp_path / "cut.pt")
    print(_refused(capsys, base + ["--checkpoint", str(cut)], "truncated"))
    # a CLIP trained on another grid: open_clip would resample it silently (ViT-L-14-336px.pt for ViT-L-14)
    open_clip = _open_clip()
    cfg = json.loads((Path(__file__).parents[1] / "models" / "configs" / "tiny.json").read_text())
    cfg["vision_cfg"]["image_size"] = 448
    (tmp_path / "tiny448.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / "tiny448.json"))
    big = _save(tmp_path / "tiny448.bin", open_clip.create_model("tiny448").state_dict())
    print(_refused(capsys, base + ["--checkpoint", str(big)], "28x28 grid", "14x14", "ViT-L-14-336"))


def test_tag_without_cache_fails_offline_without_the_network(tmp_path, capsys, monkeypatch):
    """HF_HUB_OFFLINE honoured: a tag missing from the cache is one line, and no host is looked up nor
    socket connected (each attempt is recorded and refused; a wall-clock bound would belong in a benchmark)."""
    import socket

    attempts: list[object] = []

    def refuse(*args: object) -> None:
        attempts.append(args[-1] if len(args) == 2 else args[0])  # connect's address, getaddrinfo's host
        raise OSError("network disabled by this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    try:
        print(_refused(capsys, ["export", "--model", "ViT-B-16", "--pretrained", "openai", "--hub-cache",
                                str(tmp_path), "--out", str(tmp_path / "a")],
                       "--pretrained openai", "not found in the hub cache"))
    finally:  # the network attempt is the failure to report, whatever the message became
        assert attempts == [], f"the hub was contacted offline: {attempts[:3]}"


def test_openai_tags_get_quick_gelu_and_l14_336_has_a_row():
    """The tags the official FSA code used (pretrained='openai') are QuickGELU models in open_clip's
    own cfg; ViT-L-14-336px.pt has a --model of its resolution."""
    open_clip = _open_clip()
    for name in ("ViT-B-16", "ViT-L-14", "ViT-L-14-336"):
        assert open_clip.get_pretrained_cfg(name, "openai")["quick_gelu"] is True
    assert open_clip.get_model_config("ViT-L-14-336")["vision_cfg"]["image_size"] == 336
    from fsa_deploy.models.registry import clip_spec, proxy_spec

    assert clip_spec("ViT-L-14-336").open_clip_name == "ViT-L-14-336"
    assert proxy_spec("dinov2-noreg").timm_name.startswith("vit_base_patch14_dinov2")


FULL_SIZE = [  # release file, its official names at full size (ViT-B), --proxy of the registry
    ("dino_vitbase8_pretrain.pth", lambda: official_vit("dino", 768, 12, 8, 28), "dino"),
    ("dinov2_vitb14_reg4_pretrain.pth", lambda: official_vit("dinov2-reg", 768, 12, 14, 37), "dinov2"),
    ("dinov2_vitb14_pretrain.pth", lambda: official_vit("dinov2", 768, 12, 14, 37), "dinov2-noreg"),
    ("mae_pretrain_vit_base.pth", lambda: official_vit("mae", 768, 12, 16, 14), "mae"),
    ("sam_vit_b_01ec64.pth", lambda: __import__("segment_anything").sam_model_registry["vit_b"]().state_dict(), "sam"),
]


@pytest.mark.parametrize("row", FULL_SIZE, ids=[r[0] for r in FULL_SIZE])
def test_full_size_release_names_map_onto_the_registry_proxies(row):
    """The release layouts at full size (on the meta device: no memory, no weights) fit the registry's
    full-size proxies at crop 336 through the same mapping as the tiny files."""
    import timm

    from fsa_deploy.models.registry import proxy_spec
    from fsa_deploy.models.weights import StateFile, map_proxy_state

    name, make, proxy = row
    spec = proxy_spec(proxy)
    with torch.device("meta"):
        obj = make()
        net = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, img_size=spec.input_size or 336,
                                **spec.kwargs)
    f = StateFile(obj.get("model", obj), "torch", "model" if "model" in obj else None, None)
    mapped, info = map_proxy_state(net, proxy, spec.family, f, name)
    assert set(mapped) == set(net.state_dict())
    print(name, info)
    assert info["pos_embed"] is None if proxy == "sam" else info["pos_embed"]["to_grid"] == [336 // spec.patch] * 2


def test_pretrained_tag_resolves_from_a_hub_cache_offline(files, tmp_path, capsys):
    """`--pretrained openai --hub-cache DIR` finds open_clip's hub file for the tag in DIR, offline.
    (The cached file here is tiny, so ViT-B-16 refuses it, naming it: proof it was found and read.)"""
    open_clip = _open_clip()
    repo = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].strip("/")
    hub_cache(tmp_path / "hub", repo, {"open_clip_model.safetensors": files["open_clip_model.safetensors"]})
    err = _refused(capsys, ["export", "--model", "ViT-B-16", "--pretrained", "openai", "--hub-cache",
                            str(tmp_path / "hub"), "--out", str(tmp_path / "a")],
                   f"models--{repo.replace('/', '--')}", "open_clip_model.safetensors: does not fit ViT-B-16")
    print(err)
