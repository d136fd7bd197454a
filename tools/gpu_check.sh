#!/usr/bin/env bash
# tools/gpu_check.sh (`make gpu-check`): what only a machine with an NVIDIA GPU can show, in under 8 minutes.
#   1. the CUDA tests (pytest -m "gpu or tensorrt")
#   2. `fsa validate --backend trt` on a tiny and a full-size (ViT-B-16 + DINO B/8, 336) engine of the
#      TensorRT flavour this GPU supports (TensorRT 10/11 when installed, else TensorRT-RTX on SM 8.0-12.x)
#   3. `fsa bench`'s CUDA rows on the full-size export
#   4. precision without TensorRT (validation/gpu_precision.py): the PyTorch reference on CUDA in true half, in the
#      export's split and in autocast against fp32, per stage, plain and --real-stats, tiny and full size; and the
#      fp16 emulation's prediction against the real CUDA half run (tiny)
# GPU_CHECK_DRY_RUN=1: no GPU needed; runs step 4's flow on the CPU (tiny; GPU_CHECK_WEIGHTS picks the weights) and
# skips the rest with the reason (tests/test_gpu_check_dry_run.py runs that flow in-process and this branch's report).
# Prints the card and the figures as a markdown block for docs/BENCHMARKS.md (also $OUT_DIR/report.md),
# and says what it skipped and why. Each step has a time limit, cut to what is left of BUDGET (counted from the
# script's start; a step with under 20 s left is skipped), so the whole check ends within BUDGET + the report's
# ~2 s: under 8 minutes by design. Exit 1 if a step that ran failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PY=$BIN/python
OUT_DIR=${GPU_CHECK_OUT:-out/gpu-check}
BUDGET=${GPU_CHECK_BUDGET:-470}  # seconds for everything (8 minutes less the report)
mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/report.md
LOG=$OUT_DIR/gpu-check.log
: >"$LOG"
rows=() skipped=() failed=0
left() { echo $((BUDGET - SECONDS)); }
row() { rows+=("| $1 | $2 | $3 |"); echo "== $1: $2 ($3)"; }
skip() { skipped+=("- skipped $1: $2"); echo "== SKIPPED $1: $2"; }
# step NAME SECONDS CMD...: run with a time limit, log its output, record pass/fail and its wall time
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  if [ "$(left)" -lt 20 ]; then skip "$name" "out of the ${BUDGET} s budget"; return 1; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  echo "\$ $*" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1; rc=$?
  local took=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then row "$name" pass "${took} s"; return 0; fi
  if [ $rc -eq 124 ]; then row "$name" "TIMEOUT after ${limit} s" "${took} s"; else row "$name" "FAILED (exit $rc)" "${took} s"; fi
  failed=1; tail -5 "$LOG" | sed 's/^/    /'; return 1
}

precision_step() {  # DEVICE SIZES LIMIT
  step "precision: PyTorch $1 half / split / autocast vs fp32 ($2)" "$3" "$PY" -m fsa_deploy.validation.gpu_precision \
    --device "$1" --sizes "$2" --weights "${GPU_CHECK_WEIGHTS:-plain,real-stats}" \
    --json "$OUT_DIR/precision-$1.json" --md "$OUT_DIR/precision-$1.md" || true
}

if [ -n "${GPU_CHECK_DRY_RUN:-}" ]; then
  echo "== dry run on the CPU: no GPU used"
  precision_step cpu tiny 300
  skip "pytest -m 'gpu or tensorrt', fsa build / validate --backend trt, bench CUDA rows" "dry run (no GPU)"
  { echo "### GPU check dry run (CPU)"; echo; echo "| step | result | time |"; echo "|---|---|---|"
    printf '%s\n' "${rows[@]}"; echo; printf '%s\n' "${skipped[@]}"
    [ -f "$OUT_DIR/precision-cpu.md" ] && { echo; cat "$OUT_DIR/precision-cpu.md"; }; } >"$REPORT"
  cat "$REPORT"
  exit $failed
fi

card=$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
if [ -z "$card" ]; then echo "gpu-check: no NVIDIA GPU (nvidia-smi found none): nothing to check" >&2; exit 2; fi
cc=$(echo "$card" | cut -d, -f2 | tr -d ' ')
echo "== GPU: $card"

# Which flavour this GPU runs, or why none: decided by the project's own flavour data.
flavour=$("$PY" - "$cc" <<'EOF'
import sys
from fsa_deploy.runtime.backends.trt import RTX_UNSUPPORTED
from fsa_deploy.runtime.backends.trt_lib import RTX, TARGETS, TRT, installed, target_of
cc = sys.argv[1]
if installed(TRT):
    print(f"trt TensorRT {installed(TRT)}")
elif installed(RTX) and target_of(cc) in TARGETS:
    print(f"rtx TensorRT-RTX {installed(RTX)}")
else:
    why = [f"TensorRT 10/11 is not installed ({TRT.install_hint})"]
    if installed(RTX):
        why.append(f"TensorRT-RTX does not support SM {cc} ({RTX_UNSUPPORTED.get(cc, 'not one of its targets')})")
    else:
        why.append(f"TensorRT-RTX is not installed ({RTX.install_hint})")
    print("none " + "; ".join(why))
EOF
)
engine=${flavour%% *}
echo "== TensorRT: ${flavour#* }"

precision_step cuda tiny,full 200  # first: it needs no TensorRT, and what it shows is the point on a bare GPU

step "pytest -m 'gpu or tensorrt'" 120 "$BIN/python" -m pytest -q -ra -m "gpu or tensorrt" -p no:cacheprovider \
  || true
grep -E "passed|failed|skipped" "$LOG" | tail -1 | sed 's/^/    /'

tiny=$OUT_DIR/tiny full=$OUT_DIR/b16
if [ "$engine" = none ]; then
  skip "fsa build / fsa validate --backend trt (tiny and full size)" "${flavour#none }"
else
  step "export tiny" 90 "$BIN/fsa" export --model tiny --random-init --proxy tiny-dino --crop 112 --out "$tiny" \
    --overwrite --quiet \
  && step "build tiny --engine $engine" 60 "$BIN/fsa" build "$tiny" --engine "$engine" --max-batch 4 \
  && step "validate tiny --backend trt" 60 "$BIN/fsa" validate "$tiny" --backend trt --json "$OUT_DIR/validate-tiny.json"
fi
if [ "$(left)" -gt 200 ]; then
  step "export full size (ViT-B-16 + DINO B/8, 336)" 180 "$BIN/fsa" export --random-init --out "$full" --overwrite \
    --quiet --no-lint || true
else
  skip "full-size export" "less than 200 s of the budget left"
fi
if [ "$engine" != none ] && [ -f "$full/meta.json" ]; then
  step "build full size --engine $engine" 120 "$BIN/fsa" build "$full" --engine "$engine" --max-batch 4 \
  && step "validate full size --backend trt" 120 "$BIN/fsa" validate "$full" --backend trt --batch 4 \
    --json "$OUT_DIR/validate-b16.json"
fi
if [ -f "$full/meta.json" ]; then
  only=(--only deploy --only literal --only onnx)
  [ "$engine" = trt ] && only+=(--only tensorrt)
  [ "$engine" = rtx ] && skip "bench TensorRT-RTX row" "fsa bench builds its engine rows with TensorRT 10/11"
  step "bench CUDA rows" 150 "$BIN/fsa" bench --artifact "$full" --device cuda "${only[@]}" --repeats 3 \
    --md "$OUT_DIR/bench.md" --json "$OUT_DIR/bench.json" || true
else
  skip "bench CUDA rows" "no full-size export"
fi

{
  echo "### GPU check: $card"
  echo
  echo "$(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), TensorRT: ${flavour#* }, \
$(( SECONDS / 60 )) min $(( SECONDS % 60 )) s in all."
  echo
  echo "| step | result | time |"
  echo "|---|---|---|"
  printf '%s\n' "${rows[@]}"
  [ ${#skipped[@]} -gt 0 ] && { echo; printf '%s\n' "${skipped[@]}"; }
  for f in "$OUT_DIR/validate-tiny.json" "$OUT_DIR/validate-b16.json"; do
    [ -f "$f" ] && "$PY" - "$f" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
keep = {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) and k != "artifact"}
print(f"\n{sys.argv[1].rsplit('/', 1)[-1]}: " + ", ".join(f"{k}={v}" for k, v in list(keep.items())[:12]))
EOF
  done
  [ -f "$OUT_DIR/bench.md" ] && { echo; cat "$OUT_DIR/bench.md"; }
  [ -f "$OUT_DIR/precision-cuda.md" ] && { echo; cat "$OUT_DIR/precision-cuda.md"; }
} >"$REPORT"
echo
cat "$REPORT"
echo "(log: $LOG)"
exit $failed
