"""The bad-input matrix: every row is data, run through `fsa_deploy.cli.main` in-process.

A row names its inputs (images made from a real photo, copies of the session's tiny artefact
broken in one way), the command, the exit code, words the error must contain, and the files
that must (not) exist afterwards or must be unchanged. It holds the defects found by a review of bad input and
the cases that already worked, so that both keep working. A row's `{...}` fields are:
{art} the tiny artefact (read-only), {broken:NAME} a copy of it broken by BROKEN[NAME],
{img:NAME} an image of IMAGES, {bad:NAME} a bad file of BAD_FILES, {tmp} the row's own folder,
{cache} a shared class-embedding cache, {photo} a real photo.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import photos
from PIL import Image

from fsa_deploy.cli import main
from fsa_deploy.contract import IMAGE, IMAGE_ONNX, LOGITS, META, OUTPUTS_MANIFEST, TEXT_ONNX
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime import gate

SEG = ("segment", "--artifact")
OPTS = ("--classes", "cat, dog", "--cache-dir", "{cache}", "--threads", "1")


@dataclass(frozen=True)
class Row:
    """One case: argv (with {...} fields), expected exit code, words of stderr, files afterwards."""

    id: str
    argv: tuple[str, ...]
    exit: int
    words: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()  # must not exist afterwards (no debris, nothing half-written)
    present: tuple[str, ...] = ()  # must exist afterwards
    unchanged: tuple[str, ...] = ()  # same bytes before and after
    env: tuple[tuple[str, str], ...] = ()
    one_line: bool = True  # stderr is exactly one line (else: every line starts with `fsa VERB: error:`)
    size: tuple[int, int] | None = None  # (height, width) the first output's JSON must report
    runs: int = 1  # the same command this many times (every run must meet the row)
    lines: int | None = None  # stderr has exactly this many lines (escaped names stay on their line)


def seg(image: str | tuple[str, ...], *extra: str, art: str = "{art}", out: str = "{tmp}/out") -> tuple[str, ...]:
    images = (image,) if isinstance(image, str) else image
    return (*SEG, art, *images, "--out", out, *OPTS, *extra)


def seg_file(classes_file: str) -> tuple[str, ...]:
    """segment rgb.png with --classes-file instead of --classes."""
    return (*SEG, "{art}", "{img:rgb.png}", "--out", "{tmp}/out", "--classes-file", classes_file, *OPTS[2:])


def export(*extra: str) -> tuple[str, ...]:
    return ("export", "--out", "{tmp}/art", "--model", "tiny", "--proxy", "tiny-dino", "--crop", "112",
            "--random-init", *extra)


def validate(*extra: str, art: str = "{art}") -> tuple[str, ...]:
    return ("validate", art, "--classes", "cat, dog", *extra)


GOOD_OUT = ("{tmp}/out/x.png", "{tmp}/out/x_overlay.png", "{tmp}/out/x.json")
NO_OUT = ("{tmp}/out/x.png", "{tmp}/out/x_overlay.png", "{tmp}/out/x.json")
RGB_OUT = ("{tmp}/out/rgb.png", "{tmp}/out/rgb_overlay.png", "{tmp}/out/rgb.json")
# image modes and formats that load (name -> file); every one must segment to its own size
GOOD_IMAGES = ("rgb.png", "L.png", "LA.png", "P.png", "P_transparent.png", "RGBA.png", "I16.png", "I32.tif",
               "F32.tif", "1bit.png", "CMYK.jpg", "anim.gif", "rgb.tif", "rgb.webp", "rgb.bmp", "rgb.ppm",
               "jpeg_named.png", "upper.JPG", "1x1.png", "strip_3x500.png")


def good_row(name: str) -> Row:
    out = Path(name).stem
    size = {"1x1.png": (1, 1), "strip_3x500.png": (3, 500)}.get(name, (64, 96))
    return Row(f"image {name} segments", seg(f"{{img:{name}}}"), 0,
               present=tuple(f"{{tmp}}/out/{out}{s}" for s in (".png", "_overlay.png", ".json")), size=size)


def bad_row(name: str, *words: str) -> Row:
    return Row(f"bad file {name}", seg(f"{{bad:{name}}}"), 2, (name, *words, "1 of 1 images failed"),
               absent=("{tmp}/out/" + Path(name).stem + ".png", "{tmp}/out/" + Path(name).stem + ".json"),
               one_line=False)


ROWS: list[Row] = [
    # ---------------------------------------------------------------- images that work today
    *(good_row(n) for n in GOOD_IMAGES),
    Row("EXIF orientation 6 swaps height and width", seg("{img:exif6.jpg}"), 0,
        present=("{tmp}/out/exif6.png", "{tmp}/out/exif6.json"), size=(96, 64)),
    Row("a folder of images", seg("{images}"), 0, present=("{tmp}/out/rgb.png", "{tmp}/out/anim.png"),
        one_line=False),
    Row("two runs into one folder", seg("{img:rgb.png}"), 0, present=("{tmp}/out/rgb.png",), runs=2),
    # ---------------------------------------------------------------- bad image files
    bad_row("truncated.jpg", "damaged or truncated"),
    bad_row("truncated.png", "damaged or truncated"),
    bad_row("empty.png", "empty file"),
    bad_row("text.png", "not an image"),
    bad_row("garbage.webp", "not an image"),
    bad_row("missing.png", "no such file"),
    Row("a folder without images", seg("{bad:no_images}"), 2, ("folder has no image files",), one_line=False),
    Row("--cache-dir is a file", seg("{img:rgb.png}", "--cache-dir", "{img:rgb.png}"), 2,
        ("--cache-dir", "rgb.png", "cannot be made a folder"), absent=("{tmp}/out/rgb.png",)),
    Row("good and bad images: the good one is written", seg(("{img:rgb.png}", "{bad:text.png}")), 2,
        ("text.png", "1 of 2 images failed"), present=("{tmp}/out/rgb.png",), absent=("{tmp}/out/text.png",),
        one_line=False),
    # ---------------------------------------------------------------- the pixel limit
    Row("above FSA_MAX_PIXELS", seg("{img:rgb.png}"), 2, ("96x64 = 6,144 pixels", "limit of 6,000", "FSA_MAX_PIXELS"),
        env=(("FSA_MAX_PIXELS", "6000"),), absent=("{tmp}/out/rgb.png",), one_line=False),
    Row("twice above FSA_MAX_PIXELS (Pillow's own check)", seg("{img:rgb.png}"), 2,
        ("limit of 1,000", "FSA_MAX_PIXELS"), env=(("FSA_MAX_PIXELS", "1000"),), one_line=False),
    Row("at FSA_MAX_PIXELS", seg("{img:rgb.png}"), 0, env=(("FSA_MAX_PIXELS", "6144"),),
        present=("{tmp}/out/rgb.png",)),
    Row("FSA_MAX_PIXELS not a number", seg("{img:rgb.png}"), 2, ("FSA_MAX_PIXELS", "positive pixel count"),
        env=(("FSA_MAX_PIXELS", "lots"),), one_line=False),
    # ---------------------------------------------------------------- the artefact folder
    Row("artefact folder missing", seg("{img:rgb.png}", art="{tmp}/nope"), 2, ("nope", "not a folder"),
        absent=("{tmp}/out",)),
    Row("no meta.json", seg("{img:rgb.png}", art="{broken:no_meta}"), 2, ("no meta.json",), absent=("{tmp}/out",)),
    Row("meta.json not JSON", seg("{img:rgb.png}", art="{broken:meta_not_json}"), 2, ("unreadable meta.json",)),
    Row("meta.json holds NaN", seg("{img:rgb.png}", art="{broken:meta_nan}"), 2, ("NaN is not JSON",)),
    Row("meta.json of another format", seg("{img:rgb.png}", art="{broken:meta_foreign}"), 2,
        ("not an fsa-deploy meta.json",)),
    Row("meta.json format_version 99", seg("{img:rgb.png}", art="{broken:meta_version}"), 2,
        ("format_version 99 is not supported",)),
    Row("meta.json without crop", seg("{img:rgb.png}", art="{broken:meta_no_crop}"), 2, ("field 'crop'", "missing")),
    Row("meta.json without logit_scale", seg("{img:rgb.png}", art="{broken:meta_no_logit_scale}"), 2,
        ("field 'logit_scale'", "missing")),
    Row("meta.json without templates", seg("{img:rgb.png}", art="{broken:meta_no_templates}"), 2,
        ("field 'templates'", "missing")),
    Row("meta.json without grid", seg("{img:rgb.png}", art="{broken:meta_no_grid}"), 2, ("field 'grid'", "missing")),
    Row("meta.json without files", seg("{img:rgb.png}", art="{broken:meta_no_files}"), 2, ("field 'files'",)),
    Row("meta.json crop is a string", seg("{img:rgb.png}", art="{broken:meta_crop_string}"), 2,
        ("field 'crop'", "'112' is not an integer")),
    Row("meta.json negative logit_scale", seg("{img:rgb.png}", art="{broken:meta_negative_scale}"), 2,
        ("field 'logit_scale'", "not above 0")),
    Row("meta.json bad sha256", seg("{img:rgb.png}", art="{broken:meta_bad_sha}"), 2,
        ("field 'files'", "64 hex digits")),
    Row("image.onnx changed (hash)", seg("{img:rgb.png}", art="{broken:image_changed}"), 2,
        ("image.onnx", "sha256 does not match")),
    Row("image.onnx truncated (hash)", seg("{img:rgb.png}", art="{broken:image_truncated}"), 2,
        ("image.onnx", "sha256 does not match")),
    Row("image.onnx and text.onnx swapped (hash)", seg("{img:rgb.png}", art="{broken:swapped}"), 2,
        ("sha256 does not match",)),
    Row("image.onnx missing", seg("{img:rgb.png}", art="{broken:no_image}"), 2, ("image.onnx", "missing")),
    Row("text.onnx missing (classes not in the cache)", seg("{img:rgb.png}", "--classes", "zebra",
                                                             art="{broken:no_text}"), 2,
        ("text.onnx", "missing")),
    Row("crop of meta.json disagrees with image.onnx", seg("{img:rgb.png}", art="{broken:crop_mismatch}"), 2,
        ("image.onnx", "crop 128", "[B, 3, 112, 112]")),
    # ---------------------------------------------------------------- segment options
    *(Row(f"segment {opt} {val}", seg("{img:rgb.png}", opt, val), 2, (f"{opt} {val}: ", *w), absent=NO_OUT)
      for opt, val, w in (
          ("--prob-thd", "nan", ("not a finite number",)), ("--prob-thd", "inf", ("not a finite number",)),
          ("--prob-thd", "1.5", ("outside [0, 1]",)), ("--prob-thd", "-0.1", ("outside",)),
          ("--batch", "0", ("outside [1, 4096]",)), ("--batch", "2.5", ("not an integer",)),
          ("--stride", "0", ("outside",)), ("--stride", "99999", ("outside",)),
          ("--threads", "-1", ("outside [0, 1024]",)), ("--threads", "many", ("not an integer",)))),
    Row("segment --stride above the crop", seg("{img:rgb.png}", "--stride", "113"), 2,
        ("--stride 113", "crop size 112")),
    Row("segment --stride at the crop", seg("{img:rgb.png}", "--stride", "112"), 0, present=("{tmp}/out/rgb.png",)),
    Row("segment --backend tpu", seg("{img:rgb.png}", "--backend", "tpu"), 2, ("invalid choice",)),
    Row("segment unknown option", seg("{img:rgb.png}", "--colour", "red"), 2, ("unrecognized arguments",)),
    Row("segment no classes", (*SEG, "{art}", "{img:rgb.png}", "--out", "{tmp}/out", "--classes", " , ;"), 2,
        ("no class names",)),
    Row("segment without --artifact", ("segment", "{img:rgb.png}", "--out", "{tmp}/out"), 2,
        ("--artifact",)),
    # ---------------------------------------------------------------- outputs
    Row("--out is the artefact and the stem is meta", seg("{img:meta.png}", art="{broken:plain}",
                                                         out="{broken:plain}"), 2,
        ("would overwrite meta.json",), unchanged=("{broken:plain}/meta.json",),
        absent=("{broken:plain}/meta_overlay.png",)),
    Row("--out is the artefact and the stem is image (image.png is not recorded: still inside an artefact)",
        seg("{img:image.png}", art="{broken:plain2}", out="{broken:plain2}"), 2, ("inside the artefact folder",),
        unchanged=("{broken:plain2}/meta.json", "{broken:plain2}/image.onnx"),
        absent=("{broken:plain2}/image_overlay.png",)),
    Row("--out is a file", seg("{img:rgb.png}", out="{img:rgb.png}"), 2, ("exists and is not a folder",)),
    Row("--out cannot be created", seg("{img:rgb.png}", out="/sys/fsa-deploy-test/out"), 2,
        ("/sys/fsa-deploy-test/out", "cannot"), absent=("/sys/fsa-deploy-test",)),
    Row("--out under a file", seg("{img:rgb.png}", out="{img:rgb.png}/out"), 2, ("--out", "cannot")),
    # ---------------------------------------------------------------- export options
    *(Row(f"export {opt} {val}", export(opt, val), 2, (f"{opt} {val}: ", *w), absent=("{tmp}/art",))
      for opt, val, w in (
          ("--lamda", "nan", ("not a finite number",)), ("--lamda", "inf", ("not a finite number",)),
          ("--lamda", "0", ("outside (0, 80]",)), ("--lamda", "-3", ("outside",)),
          ("--beta", "nan", ("not a finite",)), ("--beta", "-1", ("outside [0, 10]",)),
          ("--gamma", "0", ("outside (0, 100]",)), ("--gamma", "1e9", ("outside",)),
          ("--top-p", "1.5", ("outside (0, 1]",)), ("--top-p", "-1", ("outside",)), ("--top-p", "0", ("outside",)),
          ("--top-p", "nan", ("not a finite",)), ("--crop", "100000", ("outside [14, 1024]",)),
          ("--crop", "0", ("outside",)), ("--crop", "11.5", ("not an integer",)),
          ("--max-batch", "0", ("outside",)), ("--seed", "-1", ("outside",)))),
    Row("export --crop not a multiple of the patch", export("--crop", "100"), 2,
        ("--crop 100", "multiple of tiny's patch size 16"), absent=("{tmp}/art",)),
    Row("export unknown model", ("export", "--out", "{tmp}/art", "--model", "ViT-Z-99", "--random-init"), 2,
        ("--model 'ViT-Z-99'", "unknown model"), absent=("{tmp}/art",)),
    Row("export unknown proxy", export("--proxy", "tiny-nope"), 2, ("--proxy 'tiny-nope'",), absent=("{tmp}/art",)),
    Row("export unknown attention", export("--attention", "magic"), 2, ("--attention 'magic'",),
        absent=("{tmp}/art",)),
    Row("export without weights", ("export", "--out", "{tmp}/art", "--model", "tiny"), 2, ("--random-init",),
        absent=("{tmp}/art",)),
    Row("export unknown option", export("--fast"), 2, ("unrecognized arguments: --fast",), absent=("{tmp}/art",)),
    Row("export over an existing artefact without --overwrite", export(), 2, ("--overwrite",),
        present=("{tmp}/art/meta.json",), unchanged=("{tmp}/art/meta.json",)),
    Row("export over a folder that is not an artefact", ("export", "--out", "{bad:no_images}", "--model", "tiny",
                                                         "--random-init"), 2, ("not an artefact folder",)),
    # ---------------------------------------------------------------- validate
    *(Row(f"validate --tol {tol}", validate("--tol", tol), 2, w) for tol, w in (
        ("pixel_agreement_min=nan", ("--tol pixel_agreement_min", "not a finite number")),
        ("logits_rel_l2_max=inf", ("--tol logits_rel_l2_max", "not a finite number")),
        ("pixel_agreement_min=1.5", ("outside [0, 1]",)), ("miou_min=-0.1", ("outside [0, 1]",)),
        ("logits_cosine_min=2", ("outside [-1, 1]",)), ("logits_rel_l2_max=-1", ("outside",)),
        ("top_p_flips_max=0.5", ("not an integer",)), ("speed_min=1", ("unknown metric",)),
        ("pixel_agreement_min", ("expected NAME=NUMBER",)), ("miou_min=abc", ("expected NAME=NUMBER",)))),
    Row("validate --batch 0", validate("--batch", "0"), 2, ("--batch 0: outside",)),
    Row("validate --json names a folder", validate("--json", "{tmp}"), 2, ("--json", "is a folder")),
    Row("validate --md into the artefact's meta.json", validate("--md", "{broken:plain3}/meta.json",
                                                                art="{broken:plain3}"), 2,
        ("would overwrite meta.json",), unchanged=("{broken:plain3}/meta.json",)),
    Row("validate --json cannot be created", validate("--json", "/sys/fsa-deploy-test/r.json"), 2,
        ("--json", "cannot")),
    Row("validate a broken artefact", validate(art="{broken:image_changed}"), 2, ("sha256 does not match",)),
    Row("validate a good and a bad image: the good one is checked, the report lists the bad one",
        validate("--images", "{photo}", "{bad:text.png}", "--json", "{tmp}/r.json", "--md", "{tmp}/r.md"), 2,
        ("text.png", "1 of 2 images could not be checked"), present=("{tmp}/r.json", "{tmp}/r.md"), one_line=False),
    # ---------------------------------------------------------------- other verbs
    Row("calibrate --calibration-count 0", ("calibrate", "{art}", "--calibration-count", "0"), 2,
        ("--calibration-count 0: outside",)),
    Row("calibrate --batch nan", ("calibrate", "{art}", "--batch", "nan"), 2, ("--batch nan: not an integer",)),
    Row("dump --out the artefact's meta.json", ("dump", "--image", "{img:rgb.png}", "--out",
                                               "{broken:plain4}/meta.json", "--model", "tiny", "--proxy",
                                               "tiny-dino", "--crop", "112", "--random-init"), 2,
        ("would overwrite meta.json",), unchanged=("{broken:plain4}/meta.json",)),
    Row("dump --stride 0", ("dump", "--image", "{img:rgb.png}", "--out", "{tmp}/d.npz", "--stride", "0"), 2,
        ("--stride 0: outside",), absent=("{tmp}/d.npz",)),
    Row("build --max-batch 0", ("build", "{art}", "--max-batch", "0"), 2, ("--max-batch",)),
    Row("unknown verb", ("frobnicate",), 2, ("invalid choice",)),
    # ---------------------------------------------------------------- serving: refused before any work
    Row("serve --http-port 70000", ("serve", "{art}", "--http-port", "70000"), 2,
        ("--http-port 70000: outside [1, 65535]",)),
    Row("serve with two ports equal", ("serve", "{art}", "--http-port", "8100", "--grpc-port", "8100"), 2,
        ("the three ports must differ",)),
    Row("serve --instances 0", ("serve", "{art}", "--instances", "0"), 2, ("--instances 0: outside",)),
    Row("triton --batch nan", ("triton", "{art}", "--out", "{tmp}/repo", "--batch", "nan"), 2,
        ("--batch nan: not an integer",), absent=("{tmp}/repo",)),
    Row("triton --batch 2000", ("triton", "{art}", "--out", "{tmp}/repo", "--batch", "2000"), 2,
        ("--batch 2000: outside [1, 1024]",), absent=("{tmp}/repo",)),
    Row("triton --instances 0", ("triton", "{art}", "--out", "{tmp}/repo", "--instances", "0"), 2,
        ("--instances 0: outside",), absent=("{tmp}/repo",)),
    Row("bench --repeats 0", ("bench", "--artifact", "{art}", "--repeats", "0"), 2, ("--repeats 0: outside",)),
    Row("bench --min-agreement nan", ("bench", "--artifact", "{art}", "--min-agreement", "nan"), 2,
        ("--min-agreement nan: not a finite number",)),
    # ================================================================ trust: hostile artefacts, user files
    # ---------------------------------------------------------------- names read from an artefact stay inside it
    *(Row(f"artefact with a {what} files entry", seg("{img:rgb.png}", art=f"{{broken:{name}}}"), 2,
          (*words,), absent=NO_OUT, unchanged=("{victim}",))
      for name, what, words in (
          ("climb_name", "climbing (../)", ("'../victim.txt' is a path", "refused")),
          ("absolute_name", "absolute", ("is a path", "refused")),
          ("backslash_name", "backslash", ("is a path", "refused")),
          ("dotdot_name", "'..'", ("'..' is not a file name",)),
          ("control_name", "control-character", ("holds control characters",)),
          ("colon_name", "drive-letter", ("':'",)),
          ("engine_source_climbs", "climbing engine source", ("engine.source", "refused")),
          ("calibration_source_climbs", "climbing calibration source", ("source", "refused")),
          ("image_symlink_out", "symlink-out image.onnx", ("symlink leading out",)),
          ("meta_symlink_out", "symlink-out meta.json", ("symlink leading out",)),
          ("location_climbs", "climbing external-data location", ("external-data location", "refused")))),
    *(Row(f"{verb} refuses a climbing name", argv, 2, ("refused",), unchanged=("{victim}",)) for verb, argv in (
        ("validate", validate(art="{broken:climb_name}")),
        ("build", ("build", "{broken:climb_name}", "--engine", "rtx")),
        ("calibrate", ("calibrate", "{broken:climb_name}", "--calibration-count", "1")),
        ("triton", ("triton", "{broken:climb_name}", "--out", "{tmp}/repo")),
        ("lint of an artefact graph", ("lint", "{broken:climb_name}/image.onnx")))),
    Row("deeply nested meta.json", seg("{img:rgb.png}", art="{broken:nested_meta}"), 2, ("nested too deeply",)),
    Row("meta.json is a folder", seg("{img:rgb.png}", art="{broken:meta_dir}"), 2, ("no meta.json",)),
    Row("meta.json with a BOM reads", seg("{img:rgb.png}", art="{broken:meta_bom}"), 0, present=RGB_OUT),
    Row("image graph without text_embeddings", seg("{img:rgb.png}", art="{broken:no_text_input}"), 2,
        ("no input named 'text_embeddings'",), absent=NO_OUT),
    # ---------------------------------------------------------------- non-finite pixels, odd files
    *(Row(f"float TIFF with {what}", seg(f"{{bad:{name}}}"), 2, (name, "NaN or infinite pixels"), lines=2,
          absent=(f"{{tmp}}/out/{Path(name).stem}.png",))
      for name, what in (("nan.tif", "NaN"), ("inf.tif", "Infinity"), ("neginf.tif", "one -Infinity pixel"))),
    Row("calibrate on a float TIFF with NaN", ("calibrate", "{broken:plain6}", "--images", "{bad:nan.tif}",
                                               "--calibration-count", "1", "--no-calibration-cache"), 2,
        ("nan.tif", "NaN or infinite pixels"), unchanged=("{broken:plain6}/meta.json",)),
    Row("a symlink loop as the image", seg("{bad:loop.png}"), 2, ("leads nowhere",), lines=2),
    Row("a dangling symlink as the image", seg("{bad:dangling.png}"), 2, ("leads nowhere",), lines=2),
    Row("a FIFO as the image", seg("{bad:fifo.png}"), 2, ("not a regular file",), lines=2),
    Row("FSA_MAX_PIXELS=inf", seg("{img:rgb.png}"), 2, ("FSA_MAX_PIXELS",), env=(("FSA_MAX_PIXELS", "inf"),),
        one_line=False),
    Row("FSA_MAX_PIXELS=nan", seg("{img:rgb.png}"), 2, ("FSA_MAX_PIXELS",), env=(("FSA_MAX_PIXELS", "nan"),),
        one_line=False),
    # ---------------------------------------------------------------- error lines stay one line
    Row("an image name with a newline", seg("{tmp}/no\nsuch.png"), 2, ("no\\nsuch.png", "no such file"), lines=2),
    # "[2J" is a glob: a lone source that matches nothing is its one line (no "1 of 1 failed")
    Row("an image name with an escape sequence", seg("{tmp}/\x1b[2Jx.png"), 2, ("\\x1b[2Jx.png", "no such file")),
    # ---------------------------------------------------------------- class names
    Row("classes file with a BOM", seg_file("{bad:bom.txt}"), 0, present=RGB_OUT),
    Row("--classes cat, cat", seg("{img:rgb.png}", "--classes", "cat, cat"), 2, ("item 2", "repeats item 1"),
        absent=NO_OUT),
    Row("--classes cat, Cat", seg("{img:rgb.png}", "--classes", "cat, Cat"), 2, ("repeats item 1",), absent=NO_OUT),
    Row("classes file with a repeated line", seg_file("{bad:dup.txt}"), 2,
        ("dup.txt", "item 3", "repeats item 1"), absent=NO_OUT),
    Row("a synonym shared by two classes: one warning", seg("{img:rgb.png}", "--classes", "cat; kitty, dog; kitty"), 0,
        present=RGB_OUT),
    Row("COCO-Object's bed: background synonym and class", seg_file("{bad:coco.txt}"),
        0, present=RGB_OUT),
    Row("--classes with an escape sequence", seg("{img:rgb.png}", "--classes", "cat\x1b[31m, dog"), 2,
        ("control character", "U+001B"), absent=NO_OUT),
    Row("--classes with a bidi override", seg("{img:rgb.png}", "--classes", "cat\u202e, dog"), 2,
        ("control character",), absent=NO_OUT),
    Row("classes file of NUL bytes", seg_file("{bad:nul.txt}"), 2,
        ("nul.txt", "control character"), absent=NO_OUT),
    Row("a 5,000-character class name (cut in the legend)", seg("{img:rgb.png}", "--classes", "x" * 5000 + ", dog"),
        0, present=RGB_OUT),
    # ---------------------------------------------------------------- options that do not apply
    Row("segment --precision fp16 without such an engine", seg("{img:rgb.png}", "--precision", "fp16"), 2,
        ("--precision fp16", "no TensorRT engine"), absent=NO_OUT),
    Row("segment --backend onnx --precision fp32", seg("{img:rgb.png}", "--backend", "onnx", "--precision", "fp32"), 2,
        ("--precision fp32", "does not apply"), absent=NO_OUT),
    Row("calibrate --op-types ''", ("calibrate", "{art}", "--op-types", ""), 2, ("--op-types", "no op type")),
    Row("calibrate --op-types ' , '", ("calibrate", "{art}", "--op-types", " , "), 2, ("no op type",)),
    Row("validate --graph text.onnx", validate("--graph", "text.onnx"), 2, ("--graph text.onnx", "role is 'text'")),
    # ---------------------------------------------------------------- every numeric option of fsa build has a range
    *(Row(f"build {opt} {val}", ("build", "{art}", opt, val), 2, (f"{opt} {val}: ", w))
      for opt, val, w in (("--max-batch", "5000", "outside"), ("--opt-batch", "0", "outside"),
                          ("--max-classes", "0", "outside"), ("--opt-classes", "1e9", "not an integer"),
                          ("--max-prompts", "nan", "not an integer"), ("--opt-prompts", "-1", "outside"),
                          ("--workspace", "0", "outside"), ("--dla-core", "99", "outside"))),
    # ---------------------------------------------------------------- overwrite policy
    Row("export --overwrite over a user's folder holding a meta.json",
        ("export", "--out", "{bad:userproj}", "--model", "tiny", "--random-init", "--overwrite"), 2,
        ("not an artefact folder",), unchanged=("{bad:userproj}/meta.json", "{bad:userproj}/thesis.tex")),
    Row("lint --json over meta.json", ("lint", "{broken:plain}/image.onnx", "--json", "{broken:plain}/meta.json"), 2,
        ("would overwrite meta.json",), unchanged=("{broken:plain}/meta.json",)),
    Row("lint --json over text.onnx", ("lint", "{broken:plain}/image.onnx", "--json", "{broken:plain}/text.onnx"), 2,
        ("would overwrite text.onnx",), unchanged=("{broken:plain}/text.onnx",)),
    Row("lint --json into an artefact folder", ("lint", "{broken:plain}/image.onnx", "--json",
                                                "{broken:plain}/lint.json"), 2,
        ("inside the artefact folder",), absent=("{broken:plain}/lint.json",)),
    Row("lint --json over a user's file", ("lint", "{art}/image.onnx", "--json", "{bad:mine.json}"), 2,
        ("exists; pass --overwrite",), unchanged=("{bad:mine.json}",)),
    Row("validate --json over a user's file", validate("--json", "{bad:mine.json}"), 2, ("exists; pass --overwrite",),
        unchanged=("{bad:mine.json}",)),
    Row("triton --out an artefact folder", ("triton", "{broken:plain}", "--out", "{broken:plain}", "--overwrite"), 2,
        ("inside the artefact folder",), unchanged=("{broken:plain}/meta.json",)),
    Row("triton --out a folder with a user's config.pbtxt", ("triton", "{art}", "--out", "{bad:userrepo}",
                                                             "--overwrite"), 2,
        ("fsa triton did not write",), unchanged=("{bad:userrepo}/config.pbtxt",)),
    *(Row(f"dump --out {what}", ("dump", "--image", "{img:rgb.png}", "--out", out, "--model", "tiny", "--random-init"),
          2, words, unchanged=keep)
      for what, out, words, keep in (
          ("a folder", "{tmp}", ("is a folder",), ()),
          ("under a file", "{img:rgb.png}/d.npz", ("cannot create its folder",), ("{img:rgb.png}",)),
          ("a user's file", "{bad:mine.npz}", ("exists; pass --overwrite",), ("{bad:mine.npz}",)))),
    # ---------------------------------------------------------------- outputs never collide with inputs
    Row("--out the input folder: x.jpg's overlay would be the input x_overlay.png",
        seg(("{bad:collide/x.jpg}", "{bad:collide/x_overlay.png}"), out="{bad:collide}"), 2,
        ("x_overlay.png", "x.jpg", "would overwrite the input"),
        unchanged=("{bad:collide/x.jpg}", "{bad:collide/x_overlay.png}"), absent=("{bad:collide/x.json}",)),
    Row("x.jpg and x_overlay.png into one --out get distinct names",
        seg(("{bad:collide/x.jpg}", "{bad:collide/x_overlay.png}")), 0, runs=2, one_line=False,
        present=("{tmp}/out/x.png", "{tmp}/out/x_overlay.png", "{tmp}/out/x_overlay_png.png",
                 "{tmp}/out/x_overlay_png_overlay.png", "{tmp}/out/x_overlay_png.json")),
]


# ---------------------------------------------------------------- inputs


def make_images(folder: Path) -> None:
    """The good images: a 64 x 96 cut of a real photo in every mode and format."""
    folder.mkdir(parents=True)
    with Image.open(photos()[0]) as src:
        rgb = src.convert("RGB").crop((200, 40, 296, 104))  # 96 wide, 64 high
    grey16 = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    trans = rgb.convert("P")
    trans.info["transparency"] = 0
    saves: dict[str, tuple[Image.Image, dict[str, Any]]] = {
        "rgb.png": (rgb, {}), "L.png": (rgb.convert("L"), {}), "LA.png": (rgb.convert("LA"), {}),
        "P.png": (rgb.convert("P"), {}), "P_transparent.png": (trans, {"transparency": 0}),
        "RGBA.png": (rgb.convert("RGBA"), {}), "I16.png": (Image.fromarray(grey16), {}),
        "I32.tif": (Image.fromarray(grey16.astype(np.int32) * 1000), {}),
        "F32.tif": (Image.fromarray(grey16.astype(np.float32) / 65535), {}), "1bit.png": (rgb.convert("1"), {}),
        "CMYK.jpg": (rgb.convert("CMYK"), {}), "rgb.tif": (rgb, {}), "rgb.webp": (rgb, {"quality": 90}),
        "rgb.bmp": (rgb, {}), "rgb.ppm": (rgb, {}), "upper.JPG": (rgb, {"format": "JPEG"}),
        "meta.png": (rgb, {}), "image.png": (rgb, {}), "1x1.png": (rgb.resize((1, 1)), {}),
        "strip_3x500.png": (rgb.resize((500, 3)), {}),
    }
    for name, (img, kw) in saves.items():
        img.save(folder / name, **kw)
    rgb.save(folder / "anim.gif", save_all=True, append_images=[rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    rgb.save(folder / "jpeg_named.png", format="JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rgb.save(folder / "exif6.jpg", exif=exif)


def make_bad_files(folder: Path, images: Path) -> None:
    folder.mkdir(parents=True)
    jpeg, png = (images / "upper.JPG").read_bytes(), (images / "rgb.png").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image\n")
    (folder / "garbage.webp").write_bytes(os.urandom(2000))
    (folder / "no_images").mkdir()
    (folder / "no_images" / "notes.txt").write_text("no images here\n")
    # trust
    grey = np.asarray(Image.open(images / "L.png"), dtype=np.float32) / 255
    for name, value, where in (("nan.tif", np.nan, slice(None)), ("inf.tif", np.inf, slice(0, 5)),
                               ("neginf.tif", -np.inf, (3, 4))):
        bad = grey.copy()
        bad[where] = value
        Image.fromarray(bad).save(folder / name)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "dangling.png").symlink_to(folder / "absent.png")
    os.mkfifo(folder / "fifo.png")
    (folder / "bom.txt").write_bytes("\ufeffcat\ndog\n".encode())
    (folder / "dup.txt").write_text("cat\ndog\ncat\n")
    (folder / "coco.txt").write_text("background; bed\nbed\ntable\n")
    (folder / "nul.txt").write_bytes(b"\0" * 64)
    (folder / "mine.json").write_text("a user's notes\n")
    (folder / "mine.npz").write_bytes(b"a user's data")
    (folder / "userproj" / "src").mkdir(parents=True)
    (folder / "userproj" / "meta.json").write_text('{"title": "my thesis"}\n')
    (folder / "userproj" / "thesis.tex").write_text("\\documentclass{article}\n")
    (folder / "userrepo").mkdir()
    (folder / "userrepo" / "config.pbtxt").write_text('name: "mine"\n')
    (folder / "collide").mkdir()
    shutil.copy(images / "upper.JPG", folder / "collide" / "x.jpg")
    shutil.copy(images / "rgb.png", folder / "collide" / "x_overlay.png")


def _meta_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        meta = json.loads((root / META).read_text())
        edit(meta)
        (root / META).write_text(json.dumps(meta))
    return apply


def _swap(root: Path) -> None:
    os.replace(root / IMAGE_ONNX, root / "tmp")
    os.replace(root / TEXT_ONNX, root / IMAGE_ONNX)
    os.replace(root / "tmp", root / TEXT_ONNX)


def _flip_byte(root: Path) -> None:
    data = bytearray((root / IMAGE_ONNX).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / IMAGE_ONNX).write_bytes(bytes(data))


def _truncate(root: Path) -> None:
    data = (root / IMAGE_ONNX).read_bytes()
    (root / IMAGE_ONNX).write_bytes(data[: len(data) // 2])


BROKEN: dict[str, Callable[[Path], None]] = {
    "plain": lambda root: None, "plain2": lambda root: None, "plain3": lambda root: None,
    "plain4": lambda root: None, "plain5": lambda root: None,
    "no_meta": lambda root: (root / META).unlink(),
    "meta_not_json": lambda root: (root / META).write_text("{format: fsa"),
    "meta_nan": lambda root: (root / META).write_text((root / META).read_text().replace('"logit_scale": 40.0',
                                                                                        '"logit_scale": NaN')),
    "meta_foreign": _meta_edit(lambda m: m.update(format="something-else")),
    "meta_version": _meta_edit(lambda m: m.update(format_version=99)),
    "meta_no_crop": _meta_edit(lambda m: m.pop("crop")),
    "meta_no_logit_scale": _meta_edit(lambda m: m.pop("logit_scale")),
    "meta_no_templates": _meta_edit(lambda m: m.pop("templates")),
    "meta_no_grid": _meta_edit(lambda m: m.pop("grid")),
    "meta_no_files": _meta_edit(lambda m: m.pop("files")),
    "meta_crop_string": _meta_edit(lambda m: m.update(crop="112")),
    "meta_negative_scale": _meta_edit(lambda m: m.update(logit_scale=-40.0)),
    "meta_bad_sha": _meta_edit(lambda m: m["files"][IMAGE_ONNX].update(sha256="abc")),
    "crop_mismatch": _meta_edit(lambda m: m.update(crop=128)),
    "image_changed": _flip_byte,
    "image_truncated": _truncate,
    "swapped": _swap,
    "no_image": lambda root: (root / IMAGE_ONNX).unlink(),
    "no_text": lambda root: (root / TEXT_ONNX).unlink(),
    # trust: names that would lead out of the folder, and other hostile files
    "plain6": lambda root: None,
    "climb_name": lambda root: _add_record(root, "../victim.txt", role="tokenizer"),
    "absolute_name": lambda root: _add_record(root, str(root.parent / "victim.txt"), role="tokenizer"),
    "backslash_name": lambda root: _add_record(root, "..\\victim.txt", role="tokenizer"),
    "dotdot_name": lambda root: _add_record(root, "..", role="tokenizer"),
    "control_name": lambda root: _add_record(root, "image\n.onnx", role="image"),
    "colon_name": lambda root: _add_record(root, "C:victim.txt", role="tokenizer"),
    "engine_source_climbs": lambda root: _add_record(root, "image.fp32.rtx.engine", role="engine", precision="fp32",
                                                     engine={"flavour": "rtx", "source": "../victim.txt"}),
    "calibration_source_climbs": lambda root: _add_record(root, "image.int8.onnx", role="image-qdq",
                                                          source="../victim.txt"),
    "image_symlink_out": lambda root: _link_out(root, IMAGE_ONNX),
    "meta_symlink_out": lambda root: _link_out(root, META),
    "location_climbs": lambda root: _external_location(root, "../victim.txt"),
    "nested_meta": lambda root: (root / META).write_text((root / META).read_text().replace(
        '"weights":', '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "weights":')),
    "meta_dir": lambda root: ((root / META).unlink(), (root / META).mkdir()),
    "meta_bom": lambda root: (root / META).write_bytes(b"\xef\xbb\xbf" + (root / META).read_bytes()),
    "no_text_input": lambda root: _image_only_graph(root),
}


def _add_record(root: Path, name: str, **info: Any) -> None:
    """A meta.json record whose sha256 is well-formed (the check at load must refuse the name itself)."""
    meta = json.loads((root / META).read_text())
    meta["files"][name] = {"sha256": hashlib.sha256(b"victim").hexdigest(), "bytes": 6, **info}
    (root / META).write_text(json.dumps(meta))


def _link_out(root: Path, name: str) -> None:
    """`name` replaced by a symlink to an identical copy outside the folder: every hash still matches."""
    outside = root.parent / f"{root.name}-{name}"
    shutil.copy2(root / name, outside)
    (root / name).unlink()
    (root / name).symlink_to(outside)


def _rehash(root: Path, name: str) -> None:
    meta = json.loads((root / META).read_text())
    meta["files"][name].update(sha256=hashlib.sha256((root / name).read_bytes()).hexdigest(),
                               bytes=(root / name).stat().st_size)
    (root / META).write_text(json.dumps(meta))


def _external_location(root: Path, location: str) -> None:
    """image.onnx's largest weight moved to external data at `location`; its sha256 updated."""
    import onnx

    model = onnx.load(str(root / IMAGE_ONNX))
    big = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    length = len(big.raw_data)
    big.ClearField("raw_data")
    big.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = big.external_data.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(root / IMAGE_ONNX))
    _rehash(root, IMAGE_ONNX)


def _image_only_graph(root: Path) -> None:
    """An image graph with an `image` input and no `text_embeddings` (recorded, hashes right)."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, ["B", 3, 112, 112])
    out = helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["B", 3, 112, 112])
    graph = helper.make_graph([helper.make_node("Identity", [IMAGE], [LOGITS])], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / IMAGE_ONNX))
    _rehash(root, IMAGE_ONNX)


@pytest.fixture(scope="module")
def inputs(tiny_artifact, tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("matrix")
    make_images(base / "images")
    make_bad_files(base / "bad", base / "images")
    (base / "broken").mkdir()
    (base / "broken" / "victim.txt").write_text("a user's file beside the artefacts\n")  # what ../victim.txt names
    return {"base": base, "art": tiny_artifact.root, "broken": {}, "cache": base / "cache"}


def broken(inputs: dict[str, Any], name: str) -> Path:
    """A copy of the tiny artefact broken by BROKEN[name] (made once per module)."""
    if name not in inputs["broken"]:
        root = inputs["base"] / "broken" / name
        shutil.copytree(inputs["art"], root)
        BROKEN[name](root)
        inputs["broken"][name] = root
    return inputs["broken"][name]


def fill(text: str, inputs: dict[str, Any], tmp: Path) -> str:
    fields = {"art": str(inputs["art"]), "tmp": str(tmp), "cache": str(inputs["cache"]), "photo": photos()[1],
              "images": str(inputs["base"] / "images"), "victim": str(inputs["base"] / "broken" / "victim.txt")}

    def one(m: re.Match) -> str:
        kind, _, name = m.group(1).partition(":")
        if kind == "img":
            return str(inputs["base"] / "images" / name)
        if kind == "bad":
            return str(inputs["base"] / "bad" / name)
        if kind == "broken":
            return str(broken(inputs, name))
        return fields[kind]

    return re.sub(r"\{([a-z]+(?::[^}]+)?)\}", one, text)


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_matrix(row: Row, inputs, tmp_path, capsys, monkeypatch):
    for key, value in row.env:
        monkeypatch.setenv(key, value)
    if row.id.startswith("export over an existing artefact"):  # the one row that needs an artefact at --out
        shutil.copytree(inputs["art"], tmp_path / "art")
    argv = [fill(a, inputs, tmp_path) for a in row.argv]
    before = {p: digest(Path(fill(p, inputs, tmp_path))) for p in row.unchanged}
    for _ in range(row.runs):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        err = capsys.readouterr().err
        assert code == row.exit, f"exit {code}, expected {row.exit}; stderr:\n{err}"
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if row.exit:
            assert lines, "an error must say something"
            if row.one_line and row.lines is None:
                assert len(lines) == 1, f"expected one line, got:\n{err}"
            if row.lines is not None:
                assert len(lines) == row.lines, f"expected {row.lines} lines, got:\n{err}"
            assert "Traceback" not in err, err
            for word in row.words:
                assert fill(word, inputs, tmp_path) in err, f"{word!r} not in:\n{err}"
    for p in row.absent:
        assert not Path(fill(p, inputs, tmp_path)).exists(), f"{p} exists"
    for p in row.present:
        assert Path(fill(p, inputs, tmp_path)).exists(), f"{p} missing"
    for p, d in before.items():
        assert d is not None and digest(Path(fill(p, inputs, tmp_path))) == d, f"{p} changed"
    leftovers = [p for p in tmp_path.rglob(".*") if (p.is_file() or p.is_dir()) and p.name != OUTPUTS_MANIFEST]
    assert not leftovers, f"temporary files left: {leftovers}"
    if row.size:
        out = next(Path(fill(p, inputs, tmp_path)) for p in row.present if p.endswith(".json"))
        summary = json.loads(out.read_text())
        assert (summary["height"], summary["width"]) == row.size


def test_validate_report_lists_the_bad_image(inputs, tmp_path, capsys):
    """The good image was checked (numbers in the report), the bad one is listed, exit 2."""
    bad = inputs["base"] / "bad" / "text.png"
    code = main(["validate", str(inputs["art"]), "--classes", "cat, dog", "--images", photos()[1], str(bad),
                 "--json", str(tmp_path / "r.json"), "--md", str(tmp_path / "r.md")])
    assert code == 2
    report = json.loads((tmp_path / "r.json").read_text())
    assert [Path(i["image"]).name for i in report["images"]] == [Path(photos()[1]).name]
    assert report["images"][0]["logits_rel_l2"] <= 1e-5 and report["images"][0]["pixel_agreement"] == 1.0
    assert [Path(e["image"]).name for e in report["errors"]] == ["text.png"]
    assert report["passed"] is False and any("text.png" in f for f in report["failures"])
    assert "text.png" in (tmp_path / "r.md").read_text()
    assert "FAILED" in capsys.readouterr().out


# ---------------------------------------------------------------- NaN is never a pass; strict JSON


def test_nan_in_a_comparison_is_a_failure():
    from fsa_deploy.validation.validate import TOLERANCES, failures_of, summarize

    image = {"logits_rel_l2": 1e-7, "logits_cosine": 1.0, "logits_max_abs": 0.0, "logits_mean_abs": 0.0,
             "pixel_agreement": 1.0, "miou": 1.0, "top_p_tie_entries": 0, "top_p_flips": 0, "proxy_mask_ties": 0,
             "proxy_mask_flips": 0, "argmax_ties": 0, "nonfinite_logits": 0}
    assert failures_of(summarize([image, image], 0.0), TOLERANCES["fp32"]) == []
    nan = {**image, "logits_rel_l2": math.nan}
    for order in ([image, nan], [nan, image]):  # Python's max() would keep or drop the NaN by position
        for profile in ("fp32", "fp16"):  # fp16 sets no logits_rel_l2_max: NaN still fails
            fails = failures_of(summarize(order, 0.0), TOLERANCES[profile])
            assert fails and "logits_rel_l2_max = nan" in fails[0], (profile, fails)
    fails = failures_of(summarize([{**image, "nonfinite_logits": 3}], 0.0), TOLERANCES["fp16"])
    assert fails == ["nonfinite_logits = 3 (NaN or Infinity in the logits)"]
    assert failures_of(summarize([image], math.inf), TOLERANCES["fp32"])[0].startswith("text_rel_l2 = inf")


def test_json_writer_is_strict(tmp_path):
    gate.write_json(tmp_path / "ok.json", {"x": 1.5})
    with pytest.raises(FSAError, match="non-finite"):
        gate.write_json(tmp_path / "bad.json", {"x": math.nan})
    assert sorted(p.name for p in tmp_path.iterdir()) == [OUTPUTS_MANIFEST, "ok.json"]


def test_pillow_limit_follows_ours(inputs, monkeypatch):
    from fsa_deploy.runtime.images import load_image

    monkeypatch.setenv("FSA_MAX_PIXELS", "123456789")
    assert tuple(load_image(inputs["base"] / "images" / "rgb.png").shape) == (3, 64, 96)
    assert Image.MAX_IMAGE_PIXELS == 123456789


# ---------------------------------------------------------------- the Python API


API_ROWS: list[tuple[str, Callable[[], Any], tuple[str, ...]]] = [
    ("torch float with NaN", lambda: torch.full((3, 20, 30), math.nan), ("NaN or infinite", "1800")),
    ("torch float with Inf", lambda: torch.ones(3, 20, 30).index_fill_(1, torch.tensor([0]), math.inf),
     ("NaN or infinite", "90")),
    ("numpy float with NaN", lambda: np.full((20, 30, 3), np.nan, np.float32), ("NaN or infinite",)),
    ("numpy float32 without NaN", lambda: np.ones((20, 30, 3), np.float32), ("expected uint8",)),
    ("torch [H, W, 3]", lambda: torch.zeros(20, 30, 3, dtype=torch.uint8), ("expected [3, H, W]",)),
    ("empty numpy", lambda: np.zeros((0, 5, 3), np.uint8), ("no pixels",)),
    ("a list", lambda: [[1, 2, 3]], ("image of type list",)),
]
API_GOOD: list[tuple[str, Callable[[], Any]]] = [
    ("torch float 0-255", lambda: torch.full((3, 20, 30), 127.4)),
    ("numpy grey uint8", lambda: np.zeros((20, 30), np.uint8)),
]


@pytest.fixture(scope="module")
def api_seg(inputs):
    from fsa_deploy.runtime.segmenter import Segmenter

    return Segmenter.from_artifact(inputs["art"], "onnx", threads=1, cache_dir=inputs["cache"]).set_classes("cat, dog")


@pytest.mark.parametrize("name,make,words", API_ROWS, ids=[r[0] for r in API_ROWS])
def test_api_refuses(api_seg, name, make, words):
    with pytest.raises(FSAError) as err:
        api_seg.segment(make())
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("name,make", API_GOOD, ids=[r[0] for r in API_GOOD])
def test_api_accepts(api_seg, name, make):
    assert api_seg.segment(make()).labels.shape == (20, 30)


def _spec(**hp: float):
    from conftest import tiny_spec

    return tiny_spec(**hp)


def _segmenter(inputs: dict[str, Any], **opts: Any):
    from fsa_deploy.runtime.segmenter import Segmenter

    return Segmenter.from_artifact(inputs["art"], "onnx", threads=1, **opts)


def _save_into_artefact(inputs: dict[str, Any], api_seg) -> None:
    api_seg.segment(np.zeros((20, 30, 3), np.uint8)).save(broken(inputs, "plain5"), "meta")


# calls of the Python API that must raise a one-line FSAError with these words
API_CALLS: list[tuple[str, Callable[..., Any], tuple[str, ...]]] = [
    ("ModelSpec lamda NaN", lambda inputs, seg: _spec(lamda=math.nan), ("--lamda nan", "not a finite")),
    ("ModelSpec top_p 1.5", lambda inputs, seg: _spec(top_p=1.5), ("--top-p 1.5", "outside (0, 1]")),
    ("Segmenter prob_thd NaN", lambda inputs, seg: _segmenter(inputs, prob_thd=math.nan), ("--prob-thd",)),
    ("Segmenter max_batch 0", lambda inputs, seg: _segmenter(inputs, batch=0), ("--batch 0",)),
    ("Segmenter stride 0", lambda inputs, seg: _segmenter(inputs, stride=0), ("--stride 0",)),
    ("result.save over meta.json", _save_into_artefact, ("would overwrite meta.json",)),
]


@pytest.mark.parametrize("name,call,words", API_CALLS, ids=[r[0] for r in API_CALLS])
def test_api_calls_refused(inputs, api_seg, name, call, words):
    before = digest(broken(inputs, "plain5") / META)
    with pytest.raises(FSAError) as err:
        call(inputs, api_seg)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert digest(broken(inputs, "plain5") / META) == before


def test_the_docs_count_the_rows():
    trust = (Path(__file__).resolve().parents[1] / "docs" / "TRUST.md").read_text()
    count = len(ROWS) + len(API_ROWS) + len(API_GOOD) + len(API_CALLS)
    assert f"{count} cases" in trust, f"docs/TRUST.md's Bad input section should say {count} cases"
