"""`fsa bench`: one table of formats, precisions, fidelity and speed on this machine.

Rows: the PyTorch reference in the official (literal) formulation, the baseline of the run,
and in the deploy formulation; the exported graph on ONNX Runtime in fp32, fp16 and int8
Q/DQ; TensorRT engines; the CUDA variants where torch sees a GPU. A row that cannot run here
stays in the table and says why. Speed is quoted as a ratio to the literal row of the same
device; absolute times come with the machine they were taken on.

How it measures, and why:
- Every row runs in a fresh child process, forked from a server that imported torch,
  open_clip and onnxruntime once: peak memory is the row's own (VmHWM reset as in
  validation/bench/block.py) and a row that crashes or runs out of memory fails alone.
- Fidelity is `fsa validate`'s per-image check (fsa_deploy.validation.validate.validate_image: same
  reference, alignment of rounding-decided masks, tolerance profile of the row's precision)
  on the bench images, with the class embeddings computed once: run_validation would
  re-encode queries x 80 templates per row, minutes at ViT-B-16 on a CPU.
- The work of a crop forward (validation/bench/flops.py) and the measured matmul and copy rates of
  each device give a roofline floor; each row says how far above it it runs.

The package, along its seams: data (rows and results), plan (this machine, the rows),
prepare (export, calibrate, build), isolate (child processes), measure (timings, memory),
fidelity (validate's check), run (the whole run), report (table, Markdown, plot, gate),
cli (options). `fsa` imports this package for the verb and calls add_bench.

`fsa bench --block` (block) lives here too, with timing and flops, the measures the benchmarks share. The
benchmarks that only make targets run are not part of the product: they live in the checkout's benchmarks/ folder
(not installed) and import this package as any user code would. This file imports nothing heavy (no numpy, torch or
onnxruntime), so `fsa` loads only what the verb it runs needs (tests/test_structure.py).
"""

from fsa_deploy.validation.bench.cli import add_bench, run_bench_cli
from fsa_deploy.validation.bench.data import BenchOptions
from fsa_deploy.validation.bench.report import Report
from fsa_deploy.validation.bench.run import run_bench

__all__ = ["BenchOptions", "Report", "add_bench", "run_bench", "run_bench_cli"]
