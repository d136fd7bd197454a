#!/usr/bin/env bash
# mypy over the whole fsa_deploy package and the make targets' scripts in benchmarks/ (configuration:
# pyproject.toml's [tool.mypy]).
#
# mypy cannot follow setuptools' package-dir mapping (the card's top-level folders installed as
# fsa_deploy.*) nor an editable install's import hook, so it checks a tree of links in the installed
# layout: build/typecheck/src/fsa_deploy/ with fsa_deploy/*.py and one link per mapped folder, and
# benchmarks/ beside it. Its cache sits beside it (a fresh clone runs cold, ~34 s of CPU; warm ~3 s).
# Paths in the report are the repository's.
#
# TensorRT: tensorrt-stubs (10.13) ship without a py.typed marker and with two syntax errors (a
# parameter named `in`, a non-default parameter after defaults), so mypy would silently treat
# `tensorrt` as Any: the TensorRT layer is checked against a patched copy of them.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-.venv/bin/python}
case $PYTHON in */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;; esac
WORK=build/typecheck
# the site-packages folder holding the stubs: any on the interpreter's path (a venv layered over
# another one through a .pth file, or with --system-site-packages, finds them there)
SP=$("$PYTHON" -c 'import os, sys; print(next((p for p in sys.path if os.path.isfile(os.path.join(p, "tensorrt", "__init__.pyi"))), ""))')
if [ -z "$SP" ]; then
  echo "tensorrt-stubs not installed (make setup installs them with --no-deps)" >&2
  exit 2
fi
rm -rf "$WORK/src" "$WORK/stubs"
mkdir -p "$WORK/src/fsa_deploy" "$WORK/stubs/tensorrt"
cp -r "$SP/tensorrt_bindings" "$WORK/stubs/"
cp "$SP/tensorrt/__init__.pyi" "$WORK/stubs/tensorrt/"
sed -i -E 's/\(self(: IPluginV3)?, in: /(self\1, in_: /; s/channel_axis: int\)/channel_axis: int = ...)/' \
  "$WORK/stubs/tensorrt_bindings/tensorrt.pyi"
for f in fsa_deploy/*.py; do ln -s "$REPO/$f" "$WORK/src/fsa_deploy/"; done
# pyproject.toml's package-dir: "fsa_deploy.runtime" = "runtime", ... (one line per room: "runtime runtime")
ROOMS=$("$PYTHON" -c 'try:
    import tomllib
except ImportError:  # Python 3.10: mypy brings tomli
    import tomli as tomllib
dirs = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]
for package, folder in dirs.items():
    print(package.removeprefix("fsa_deploy."), folder)')
SED=()
while read -r sub folder; do
  ln -s "$REPO/$folder" "$WORK/src/fsa_deploy/$sub"
  SED+=(-e "s#^fsa_deploy/$sub/#$folder/#")
done <<< "$ROOMS"
ln -s "$REPO/benchmarks" "$WORK/src/benchmarks"
cd "$WORK/src"
set +e
MYPYPATH="$REPO/$WORK/stubs" "$PYTHON" -m mypy --config-file "$REPO/pyproject.toml" --cache-dir ../cache \
  -p fsa_deploy -p benchmarks 2>&1 | sed "${SED[@]}"
exit "${PIPESTATUS[0]}"
