#!/usr/bin/env bash
# mypy on the TensorRT layer against tensorrt-stubs (10.13). The stubs ship without a
# py.typed marker and with two syntax errors (a parameter named `in`, a non-default
# parameter after defaults), so mypy would silently treat `tensorrt` as Any: check
# against a patched copy instead, in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
# the site-packages folder holding the stubs: any on the interpreter's path (a venv layered over
# another one through a .pth file, or with --system-site-packages, finds them there)
SP=$("$PYTHON" -c 'import os, sys; print(next((p for p in sys.path if os.path.isfile(os.path.join(p, "tensorrt", "__init__.pyi"))), ""))')
if [ -z "$SP" ]; then
  echo "tensorrt-stubs not installed (make setup installs them with --no-deps)" >&2
  exit 2
fi
STUBS=$(mktemp -d)
trap 'rm -rf "$STUBS"' EXIT
cp -r "$SP/tensorrt_bindings" "$STUBS/"
mkdir "$STUBS/tensorrt"
cp "$SP/tensorrt/__init__.pyi" "$STUBS/tensorrt/"
sed -i -E 's/\(self(: IPluginV3)?, in: /(self\1, in_: /; s/channel_axis: int\)/channel_axis: int = ...)/' \
  "$STUBS/tensorrt_bindings/tensorrt.pyi"
MYPYPATH="$STUBS" "$PYTHON" -m mypy --ignore-missing-imports --follow-imports=silent \
  export/trt_build.py export/trt_options.py export/lint/parser.py runtime/backends/trt.py runtime/backends/trt_lib.py runtime/doctor.py
