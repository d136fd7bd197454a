"""The validator and the benchmarks: they read both ends (the PyTorch reference and the
artefact's graphs or engines), so they live apart from the runtime.
"""
