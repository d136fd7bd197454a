"""`fsa`: the thin dispatcher. Each verb lives with the package it belongs to.

A verb's module is imported only when the verb is used, so `fsa doctor` on an
edge box never imports open_clip or timm. Each module exposes `add_parser(sub)`
that registers its verb with argparse and sets `func`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fsa_deploy import interrupts, log
from fsa_deploy.errors import CheckFailed, FSAError, escape
from fsa_deploy.interrupts import Interrupted
from fsa_deploy.runtime import environ
from fsa_deploy.spellings import OneLineParser

# verb -> (module that defines it as module.add_<verb>(subparsers), one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "export": ("fsa_deploy.export.cli", "PyTorch model -> artefact folder (ONNX graphs + meta.json)"),
    "lint": ("fsa_deploy.export.lint.cli", "check an ONNX graph against TensorRT's ONNX parser rules"),
    "build": ("fsa_deploy.export.trt_build", "artefact folder -> TensorRT engines"),
    "calibrate": ("fsa_deploy.calibration.cli", "explicit Q/DQ (int8, fp8) ONNX from calibration images"),
    "segment": ("fsa_deploy.runtime.cli", "label maps, overlays and a JSON summary per image"),
    "validate": ("fsa_deploy.validation.validate", "artefact vs PyTorch reference, in numbers"),
    "dump": ("fsa_deploy.models.cli", "reference stage tensors of one crop to an .npz"),
    "bench": ("fsa_deploy.validation.bench", "latency / memory / fidelity table"),
    "doctor": ("fsa_deploy.runtime.doctor", "what this machine can run: CUDA, GPU, TensorRT, ORT providers"),
    "triton": ("fsa_deploy.runtime.serve.cli", "artefact folder -> Triton model repository (NVIDIA's container)"),
    "serve": ("fsa_deploy.runtime.serve.cli", "run Triton here on an artefact: fsa_segment over HTTP/gRPC"),
    "eval": ("fsa_deploy.validation.eval", "mIoU on a segmentation benchmark under the paper's protocol, per backend"),
    "app": ("fsa_deploy.runtime.app", "a web page to try an artefact: photos and a live camera"),
}


def build_parser(verb: str | None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fsa", description="FSA open-vocabulary segmentation: export, run, validate.",
                           epilog="Every verb takes -q/--quiet (no progress lines on stderr; warnings and errors "
                                  "still show) and -v/--verbose (more detail). A verb's results (JSON, tables) "
                                  "are on stdout either way.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    # Only the module of the verb in use is imported; `fsa --help` lists every verb.
    for name, (module, text) in VERBS.items():
        if name == verb:
            getattr(importlib.import_module(module), f"add_{name}")(sub, text)
            log.add_verbosity_args(sub.choices[name])
        else:
            sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    # before the verb's imports: a signal at any moment becomes Interrupted (exit 130 / 143)
    with interrupts.handling():
        try:
            rc = _main(argv, verb)
        except Exception:  # a library turned the interrupt into another error (a half-done import)
            if interrupts.received() is None:
                raise
            rc = None
        code = interrupts.exit_code()
    if code is not None and rc != code:  # the interrupt was swallowed or changed: the signal decides
        print(f"fsa {verb}: interrupted", file=sys.stderr)
        return code
    return int(rc or 0)


def _main(argv: list[str], verb: str | None) -> int:
    try:
        parser = build_parser(verb if verb in VERBS else None)
        args = parser.parse_args(argv)
        log.configure(log.level_of(getattr(args, "quiet", False), getattr(args, "verbose", 0)))
        log.logger("cli").debug(f"fsa {verb}: " + ", ".join(f"{k}={v!r}" for k, v in sorted(vars(args).items())
                                                           if not callable(v)))  # -v: what the verb was given
        environ.check_all()  # every FSA_* variable, before any work
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except FSAError as e:
        print(f"fsa {verb}: error: {escape(str(e))}", file=sys.stderr)  # one line, whatever a name holds
        return 2
    except OSError as e:  # the file system said no (read-only folder, full disk): one line naming the file
        where = f"{e.filename}: " if e.filename else ""
        print(f"fsa {verb}: error: {escape(where + (e.strerror or str(e)))}", file=sys.stderr)
        return 2
    except CheckFailed as e:
        print(f"fsa {verb}: FAILED: {escape(str(e))}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"fsa {verb}: interrupted ({e})", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"fsa {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
