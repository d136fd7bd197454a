#!/usr/bin/env bash
# The main job, end to end on the CPU: export ViT-B-16 + DINO ViT-B/8 at 336 (random init),
# segment a real photo with ONNX Runtime, validate the artefact against the PyTorch reference.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-out/demo}
ART="$OUT/artifact"
# 6 queries keep the 80-template text encoding short on a CPU; any --classes works
CLASSES=${CLASSES:-"background; wall; floor, cat; kitten, sofa, plant"}
IMAGE=${IMAGE:-$("$BIN/python" -c "from fsa_deploy.runtime.images import sample_photos; print(sample_photos()[1])")}

"$BIN/fsa" export --model ViT-B-16 --random-init --seed 0 --proxy dino --crop 336 --out "$ART" --overwrite
"$BIN/fsa" segment "$IMAGE" --artifact "$ART" --out "$OUT" --backend onnx --classes "$CLASSES"
status=0
"$BIN/fsa" validate "$ART" --images "$IMAGE" --backend onnx --classes "$CLASSES" \
  --json "$OUT/report.json" --md "$OUT/report.md" --overwrite || status=$?
stem=$(basename "${IMAGE%.*}")
echo
echo "verdict: $([ $status -eq 0 ] && echo PASSED || echo FAILED) (report: $OUT/report.md, $OUT/report.json)"
echo "overlay: $OUT/${stem}_overlay.png"
exit $status
