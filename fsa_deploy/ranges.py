"""Valid ranges of the numeric options: one table, checked by argparse before any work.

Every numeric option of every verb takes its `type=` from RANGES, so a value out of range,
NaN or Infinity is a one-line error (FSAError, exit 2) naming the option, the value and the range, and
`--help` prints the range. The same Range objects check values given through the Python API.
"""

from __future__ import annotations

import math
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
        return self.check(value, option, text)

    def check(self, value: Any, name: str, text: str | None = None) -> Any:
        """`value` if valid, else FSAError naming the option and the value (also the Python API's check)."""
        bad = self.problem(value)
        if bad:
            raise FSAError(f"{name} {value if text is None else text}: {bad}")
        return value


# option -> valid range; --help of each option prints it
RANGES: dict[str, Range] = {
    # docs/METHOD.md: E = Sim * exp(lamda * Sim) stays finite in fp32 for lamda <= 80
    "--lamda": Range(0.0, 80.0, lo_open=True, why="exp(lamda) must stay finite in fp32"),
    "--beta": Range(0.0, 10.0, why="S0 - beta * mean(S0): above ~1/mean(S0) every entry is masked"),
    "--gamma": Range(0.0, 100.0, lo_open=True, why="a scale of the proxy similarities"),
    "--top-p": Range(0.0, 1.0, lo_open=True, why="a probability mass"),
    "--crop": Range(14, 1024, integer=True, why="a multiple of the model's patch size"),
    "--seed": Range(0, 2**32 - 1, integer=True),
    "--max-batch": Range(1, 4096, integer=True),
    "--stride": Range(1, 1024, integer=True, why="at most the crop size"),
    "--prob-thd": Range(0.0, 1.0, why="a probability"),
    "--threads": Range(0, 1024, integer=True, why="0: onnxruntime's default"),
    "--count": Range(1, 100_000, integer=True),
    "--batch": Range(1, 4096, integer=True),
    "--repeats": Range(1, 100_000, integer=True),
    "--warmup": Range(0, 100_000, integer=True),
    "--calibration-count": Range(1, 100_000, integer=True),
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
    "--port": Range(1, 65535, integer=True),  # fsa app
}


def with_range(option: str, help_text: str) -> str:
    """`help_text` (argparse %-escaped already) with the option's valid range appended."""
    return f"{help_text}; valid {RANGES[option]}"


def add_ranged(parser: Any, option: str, help_text: str, **kwargs: Any) -> Any:
    """parser.add_argument(option, type=<its range>, help=<help + range>, **kwargs)."""
    rng = RANGES[option]
    # argparse lets other exceptions than ArgumentTypeError through: the FSAError is the CLI's one line
    kwargs.setdefault("metavar", "N" if rng.integer else "X")
    return parser.add_argument(option, type=lambda text: rng.parse(text, option), help=with_range(option, help_text),
                               **kwargs)
