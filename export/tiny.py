"""The tiny artefact the benchmarks and make targets run on when no real one is given.

One definition, so every benchmark measures the same model: tiny CLIP + tiny DINO proxy, random
weights (seed 0), 112 px crops. It is exported once per folder and kept: a folder that already
holds a meta.json is used as it is. The export runs as `fsa export` in a child process, as a
user would run it, so the caller (often a benchmark measuring its own memory) never loads torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fsa_deploy.contract import META

# `fsa export` arguments of the tiny artefact (besides --out)
TINY_EXPORT = ("--model", "tiny", "--random-init", "--seed", "0", "--proxy", "tiny-dino", "--crop", "112")


def tiny_artifact(folder: str | os.PathLike[str]) -> Path:
    """`folder`, with the tiny artefact exported into it first unless it already holds one."""
    out = Path(folder)
    if not (out / META).is_file():
        subprocess.run([sys.executable, "-m", "fsa_deploy", "export", "--out", str(out), *TINY_EXPORT, "--quiet",
                        "--overwrite"], check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))  # nothing to fetch
    return out
