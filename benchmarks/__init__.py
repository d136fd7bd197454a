"""The make targets' benchmarks (README "Other make targets", figures in docs/BENCHMARKS.md), one module each, named for
what it measures, run from the checkout as `python -m benchmarks.NAME` (not installed: the wheel holds the product).
They import `fsa_deploy` as any user code would; clips and ports are the helpers they share with the tests."""
