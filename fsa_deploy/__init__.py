"""fsa-deploy: FSA open-vocabulary segmentation, exported, built, run and validated.

One installed package; its parts map to the repository's folders:

- `fsa_deploy.runtime` (runtime/): the base install. Artefact reading, image pipeline,
  backends (ONNX Runtime, TensorRT), the Segmenter, `fsa segment`, serving.
- `fsa_deploy.models` (models/): the PyTorch reference (open_clip, timm): extra `export`.
- `fsa_deploy.export` (export/): ONNX export, lint, TensorRT engines: extras `export`, `rtx`.
- `fsa_deploy.calibration` (calibration/): ModelOpt Q/DQ graphs: extra `quant`.
- `fsa_deploy.validation` (validation/): the validator and benchmarks, which read both ends.

`fsa_deploy.contract` holds the names every part agrees on; `fsa_deploy.errors` the two
exception types the CLI maps to exit codes.
"""

__version__ = "0.2.0"
