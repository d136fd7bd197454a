"""Valid ranges of the numeric options: one table, checked by argparse before any work.

Every numeric option of every verb and benchmark script takes its `type=` from RANGES (add_ranged), so
a value out of range, NaN or Infinity is a one-line error (FSAError, exit 2) naming the option, the value
and the range, and `--help` prints the range. The bounds of library parameters are named for what they
are (CROPS_PER_CALL, CROPS_PER_REQUEST, ...): the library checks its arguments against them, and the CLI's
table below is generated from them plus the options only the CLI has. A key is `--option` where the option
means the same everywhere, `VERB --option` where one verb's code admits another range (fsa triton's --batch
is CROPS_PER_REQUEST, the image model's max_batch_size, 1-1024).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from fsa_deploy.errors import FSAError


@dataclass(frozen=True)
class Range:
    """A number in [lo, hi] (or (lo, hi] with lo_open); finite; an integer with `integer`."""

    lo: float
    hi: float
    integer: bool = False
    lo_open: bool = False
    why: str = ""  # what the bounds protect, for --help
    option: str = ""  # the CLI option that sets the parameter: what an error from the library names

    def __str__(self) -> str:
        lo = f"{self.lo:g}" if not self.integer else str(int(self.lo))
        hi = f"{self.hi:g}" if not self.integer else str(int(self.hi))
        return f"{'(' if self.lo_open else '['}{lo}, {hi}]" + (" integer" if self.integer else "")

    def problem(self, value: Any) -> str | None:
        """None if `value` is valid, else what is wrong with it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"not a number (valid: {self})"
        if not math.isfinite(value):
            return f"not a finite number (valid: {self})"
        if self.integer and value != int(value):
            return f"not an integer (valid: {self})"
        if value < self.lo or (self.lo_open and value == self.lo) or value > self.hi:
            return f"outside {self}"
        return None

    def parse(self, text: str, option: str) -> int | float:
        """The value of `option TEXT`, or FSAError (one line naming the option, exit 2)."""
        try:
            value: int | float = int(text) if self.integer else float(text)
        except ValueError:
            raise FSAError(f"{option} {text}: not {'an integer' if self.integer else 'a number'} "
                           f"(valid: {self})") from None
        self.check(value, option, text)
        return value

    def check(self, value: Any, name: str | None = None, text: str | None = None) -> Any:
        """`value` if valid, else FSAError naming the option (default `option`) and the value (also the
        Python API's check: a library parameter names the CLI option a user set it with)."""
        bad = self.problem(value)
        if bad:
            raise FSAError(f"{name or self.option} {value if text is None else text}: {bad}")
        return value


# ---- bounds of library parameters, named for what they are (each names the CLI option that sets it)
# Segmenter.batch, validate, eval, bench (per forward), calibrate (per step): crops per backend call
CROPS_PER_CALL = Range(1, 4096, integer=True, why="crops per call", option="--batch")
# fsa_segment's requests to fsa_image: the image model's max_batch_size (RepoOptions.batch)
CROPS_PER_REQUEST = Range(1, 1024, integer=True, why="crops per image-model request", option="--batch")
# export: the graph's batch dimension; build: the engine profile's maximum (the graph's limit)
GRAPH_MAX_BATCH = Range(1, 4096, integer=True, why="the largest crop batch the graph or engine admits",
                        option="--max-batch")
CALIBRATION_COUNT = Range(1, 100_000, integer=True, why="crops calibrating the Q/DQ graph",
                          option="--calibration-count")
PROB_THD = Range(0.0, 1.0, why="a probability", option="--prob-thd")
# ModelSpec: the crop and the FSA hyper-parameters (docs/METHOD.md)
CROP = Range(14, 1024, integer=True, why="a multiple of the model's patch size", option="--crop")
# E = Sim * exp(lamda * Sim) stays finite in fp32 for lamda <= 80
LAMDA = Range(0.0, 80.0, lo_open=True, why="exp(lamda) must stay finite in fp32", option="--lamda")
BETA = Range(0.0, 10.0, why="S0 - beta * mean(S0): above ~1/mean(S0) every entry is masked", option="--beta")
GAMMA = Range(0.0, 100.0, lo_open=True, why="a scale of the proxy similarities", option="--gamma")
TOP_P = Range(0.0, 1.0, lo_open=True, why="a probability mass", option="--top-p")
HYPER_PARAMETERS = {"lamda": LAMDA, "beta": BETA, "gamma": GAMMA, "top_p": TOP_P}  # HyperParams field -> bound
LIBRARY_BOUNDS = (CROPS_PER_CALL, GRAPH_MAX_BATCH, CALIBRATION_COUNT, PROB_THD, CROP, *HYPER_PARAMETERS.values())
# meta.json: a file record's `bytes` (1 TiB at most: no graph or engine comes near)
FILE_BYTES = Range(0, 2**40, integer=True, why="a file's size in bytes")


# "--option" or "VERB --option" -> valid range; --help of each option prints it
RANGES: dict[str, Range] = {
    **{b.option: b for b in LIBRARY_BOUNDS},
    "triton --batch": CROPS_PER_REQUEST,
    "serve --batch": CROPS_PER_REQUEST,
    "--seed": Range(0, 2**32 - 1, integer=True),
    # any finite X > 0: a scale whose fp32 graph overflows is what the fp16 export refuses, not the option
    "--real-stats-scale": Range(0.0, sys.float_info.max, lo_open=True,
                                why="multiplies every planted magnitude; 1 = published"),
    "--stride": Range(1, 1024, integer=True, why="at most the crop size"),
    "--threads": Range(0, 1024, integer=True, why="0: onnxruntime's default"),
    "--repeats": Range(1, 100_000, integer=True),
    "--warmup": Range(0, 100_000, integer=True),
    "--min-agreement": Range(0.0, 2.0, why="a fraction of pixels; above 1 fails on purpose"),
    "--tokens": Range(1, 100_000, integer=True),
    "--num-classes": Range(1, 100_000, integer=True),
    "--instances": Range(1, 256, integer=True, why="python-backend processes of fsa_segment"),
    # 0 would let the system pick a port nobody knows; below 1024 needs root
    "--http-port": Range(1, 65535, integer=True),
    "--grpc-port": Range(1, 65535, integer=True),
    "--metrics-port": Range(1, 65535, integer=True),
    # fsa build: the optimisation profile's bounds and the builder's limits
    "--opt-batch": Range(1, 4096, integer=True, why="at most --max-batch"),
    "--max-classes": Range(1, 65536, integer=True),
    "--opt-classes": Range(1, 65536, integer=True, why="at most --max-classes"),
    "--max-prompts": Range(1, 65536, integer=True),
    "--opt-prompts": Range(1, 65536, integer=True, why="at most --max-prompts"),
    "--workspace": Range(1, 1 << 20, integer=True, why="MiB: up to 1 TiB"),
    "--dla-core": Range(0, 15, integer=True),
    # fsa eval / segment / dump: the protocol's resize (mmcv's keep-ratio scale), the split's head
    "--short-side": Range(1, 16384, integer=True, why="pixels of the resized image's short side"),
    "--long-side": Range(1, 65536, integer=True, why="pixels of the resized image's long side"),
    "--limit": Range(1, 10_000_000, integer=True),
    "--max-miou-drop": Range(0.0, 1.0, why="a fraction of mIoU (0.01 = one point)"),
    "--concurrency": Range(1, 256, integer=True, why="requests in flight per server"),
    "--server-timeout": Range(0.1, 86400.0, why="seconds a server may take for one image"),
    "--port": Range(1, 65535, integer=True),  # fsa app
    # video sources (fsa segment, fsa app --source): frame selection and a live source's patience
    "--every": Range(1, 1_000_000, integer=True, why="keep one frame in N"),
    "--max-fps": Range(0.0, 1000.0, lo_open=True, why="frames per second of source time kept"),
    "--start": Range(0.0, 1e7, why="seconds into the source"),
    "--duration": Range(0.0, 1e7, lo_open=True, why="seconds of source time"),
    "--stream-timeout": Range(0.0, 3600.0, lo_open=True, why="seconds without a frame before a source is stalled"),
    "--sequence-fps": Range(0.0, 1000.0, lo_open=True, why="frame rate given to an image sequence"),
    # benchmark scripts (make bench-*): counts of their own
    "--requests": Range(1, 1_000_000, integer=True, why="bench-serve: requests between the two RSS readings"),
    "--per-level": Range(1, 100_000, integer=True, why="bench-serve: requests per concurrency level"),
    "--num-images": Range(1, 100_000, integer=True, why="bench-eval: generated images"),
    "--rounds": Range(1, 1000, integer=True, why="bench-eval: timed rounds, the best counts"),
}


def range_of(option: str, verb: str | None = None) -> Range:
    """The range of `option` in `verb` (its own entry if it has one, else the option's)."""
    if verb is not None and f"{verb} {option}" in RANGES:
        return RANGES[f"{verb} {option}"]
    return RANGES[option]


@dataclass(frozen=True)
class Ranged:
    """argparse's `type=` of a ranged option: tests find every numeric option through it."""

    option: str
    range: Range

    def __call__(self, text: str) -> int | float:
        # argparse lets other exceptions than ArgumentTypeError through: the FSAError is the CLI's one line
        return self.range.parse(text, self.option)


def verb_of(parser: Any) -> str | None:
    """`segment` for the parser of `fsa segment`; None for an argument group or another program."""
    prog = str(getattr(parser, "prog", ""))
    return prog.split()[1] if prog.startswith("fsa ") else None


def add_ranged(parser: Any, option: str, help_text: str, verb: str | None = None, **kwargs: Any) -> Any:
    """parser.add_argument(option, type=<its range>, help=<help + range>, **kwargs); `verb` defaults to the
    parser's (fsa VERB), for the entries keyed by verb."""
    rng = range_of(option, verb or verb_of(parser))
    kwargs.setdefault("metavar", "N" if rng.integer else "X")
    return parser.add_argument(option, type=Ranged(option, rng), help=f"{help_text}; valid {rng}", **kwargs)
