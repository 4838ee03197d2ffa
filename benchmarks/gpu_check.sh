#!/usr/bin/env bash
# benchmarks/gpu_check.sh OUTDIR — the whole tl path on one CUDA machine, in under 5 minutes.
#
# For a machine that has torch (CUDA), onnx and onnxruntime(-gpu) but no internet:
# installs this checkout without dependencies, makes synthetic data, trains one epoch with
# AMP on CUDA, exports ONNX FP32/FP16/INT8 (+ TensorRT engines when `import tensorrt`
# works), then benches on CUDA at batch 1, 8, 32 and 64. Everything (logs included) goes
# to OUTDIR; OUTDIR/summary.txt lists each step's time.
#
# Knobs (environment): ARCH (vgg16), SIZE (224), DEVICE (cuda; cpu only to smoke-test the
# plumbing), BATCHES (1,8,32,64), CELL_SECONDS (1 per bench cell), BACKENDS (all that run),
# PYTHON (python3).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
ARCH=${ARCH:-vgg16}
SIZE=${SIZE:-224}
DEVICE=${DEVICE:-cuda}
BATCHES=${BATCHES:-1,8,32,64}
SECONDS_PER_CELL=${CELL_SECONDS:-1}  # not SECONDS: bash's own clock
MAXB=$(echo "$BATCHES" | tr ',' '\n' | sort -n | tail -1)
[[ $MAXB -lt 2 ]] && MAXB=2
OPTB=$(( MAXB < 8 ? MAXB : 8 ))
mkdir -p "$OUT/logs"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
T0=$(date +%s)

step() {  # step NAME CMD...: run, log to OUT/logs/NAME.log, record seconds; stop on failure
    local name=$1
    shift
    local t=$(date +%s)
    echo "== $name: $*" | tee -a "$SUMMARY"
    if "$@" >"$OUT/logs/$name.log" 2>&1; then
        echo "   ok in $(( $(date +%s) - t )) s" | tee -a "$SUMMARY"
    else
        local rc=$?
        echo "   FAILED (exit $rc) after $(( $(date +%s) - t )) s; last lines of $OUT/logs/$name.log:" | tee -a "$SUMMARY"
        tail -n 25 "$OUT/logs/$name.log" | tee -a "$SUMMARY"
        exit "$rc"
    fi
}

# Before anything imports them: a box without torch (a Jetson's runtime-only install, a bare Python)
# gets this line on the terminal, not a silent exit from the environment block below.
if ! "$PY" -c "import sys" >/dev/null 2>&1; then
    echo "error: PYTHON=$PY does not run; point PYTHON at the interpreter that has torch" | tee -a "$SUMMARY" >&2
    exit 1
fi
missing=$("$PY" -c "
import importlib.util
need = ['torch', 'torchvision', 'onnx', 'onnxscript', 'onnxruntime', 'click', 'rich', 'numpy', 'PIL', 'matplotlib']
print(' '.join(m for m in need if importlib.util.find_spec(m) is None))")
if [[ -n "$missing" ]]; then
    echo "error: missing Python packages: $missing ($PY; this script installs tl with --no-deps; install them from a local wheelhouse; a box without torch builds its engine with: tl export model.onnx --trt)" | tee -a "$SUMMARY" >&2
    exit 1
fi

# -- environment ---------------------------------------------------------------------------
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "repo: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import importlib.metadata as md, sys
print("python", sys.version.split()[0])
for d in ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "tensorrt", "click", "rich",
          "numpy", "Pillow", "matplotlib"):
    try:
        print(d, md.version(d))
    except md.PackageNotFoundError:
        print(d, "not installed")
try:
    import torch
    print("cuda available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:  # reported, never fatal: the package check above names what is missing
    print("torch:", e)
try:
    import onnxruntime as ort
    print("ort providers", ort.get_available_providers())
except Exception:
    pass
EOF
} >"$OUT/environment.txt" 2>&1 || true
cat "$OUT/environment.txt"

if [[ "$DEVICE" == cuda ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: torch sees no CUDA GPU; this script is for a CUDA machine (DEVICE=cpu only smoke-tests it)" | tee -a "$SUMMARY" >&2
    exit 1
fi

# -- install: pip without deps (no internet: no build isolation), else a PYTHONPATH shim -----
TL=("$PY" -m tl)
if ! "$PY" -c "import tl.benchmarks" >/dev/null 2>&1 || [[ "$("$PY" -c 'import tl, os; print(os.path.dirname(os.path.dirname(tl.__file__)))' 2>/dev/null)" != "$REPO" ]]; then
    if ! "$PY" -m pip install --no-deps --no-build-isolation -e "$REPO" >"$OUT/logs/install.log" 2>&1 \
        || ! (cd / && "$PY" -c "import tl.benchmarks") >>"$OUT/logs/install.log" 2>&1; then
        # The top-level folders are tl's subpackages (pyproject's package-dir); mirror that with links.
        SHIM="$OUT/.shim"
        rm -rf "$SHIM" && mkdir -p "$SHIM/tl"
        for f in "$REPO"/tl/*; do ln -s "$f" "$SHIM/tl/"; done
        for sub in runtime train export benchmarks; do ln -s "$REPO/$sub" "$SHIM/tl/$sub"; done
        export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
        echo "pip install failed (see logs/install.log); using PYTHONPATH shim $SHIM" | tee -a "$SUMMARY"
    fi
fi
(cd / && "$PY" -c "import tl.benchmarks, tl.export, tl.train, tl.runtime") || { echo "error: tl does not import" >&2; exit 1; }

TRT_FLAG=()
if "$PY" -c "import tensorrt" >/dev/null 2>&1 && [[ "$DEVICE" == cuda ]]; then
    # The tensorrt wheels do not depend on cuda-python, but tl's TensorRT runtime does.
    if ! "$PY" -c "import importlib.util as u, sys; sys.exit(0 if (u.find_spec('cuda') and (u.find_spec('cuda.bindings') or u.find_spec('cuda.cudart'))) else 1)" 2>/dev/null; then
        echo "error: tensorrt imports but cuda-python does not; install the cuda-python whose CUDA major matches TensorRT's (pip install 'tl[gpu-cu12]' or 'tl[gpu-cu13]')" | tee -a "$SUMMARY" >&2
        exit 1
    fi
    TRT_FLAG=(--trt)
    echo "tensorrt: $("$PY" -c 'import tensorrt; print(tensorrt.__version__)') -> TensorRT engines will be built" | tee -a "$SUMMARY"
else
    echo "tensorrt: not importable -> no engines (trt rows say skipped)" | tee -a "$SUMMARY"
fi

# -- the path ---------------------------------------------------------------------------------
cd "$OUT"
step data "${TL[@]}" data synth "$OUT/data" --classes 4 --per-class 40 --size "$SIZE"
step train "${TL[@]}" train "$OUT/data" --out "$OUT/run" --arch "$ARCH" --weights none --image-size "$SIZE" \
    --epochs 1 --batch-size 32 --device "$DEVICE" --amp --workers 2 --no-progress
step resume "${TL[@]}" train --resume "$OUT/run/last.pt" --epochs 2 --no-progress
step export "${TL[@]}" export "$OUT/run" --out "$OUT/export" --onnx --fp16 --int8 "${TRT_FLAG[@]}" \
    --max-batch "$MAXB" --opt-batch "$OPTB" --calib-dir "$OUT/data/train" --calib-count 32 --parity-count 64
# The edge box's route on this GPU: FP16 and INT8 built from model.onnx alone, checked against it.
step edge-export "${TL[@]}" export "$OUT/export/model.onnx" --out "$OUT/edge" --fp16 --int8 \
    --calib-dir "$OUT/data/train" --calib-count 32 --val-dir "$OUT/data/val" --parity-count 64
step bench "${TL[@]}" bench "$OUT/run" "$OUT/export" --device "$DEVICE" --batch-sizes "$BATCHES" \
    --warmup 2 --seconds "$SECONDS_PER_CELL" --val-dir "$OUT/data/val" --out "$OUT/bench" \
    ${BACKENDS:+--backends "$BACKENDS"}

echo "total: $(( $(date +%s) - T0 )) s" | tee -a "$SUMMARY"
echo "results: $OUT/bench/bench.md, bench.json, bench.png; logs: $OUT/logs/" | tee -a "$SUMMARY"
cat "$OUT/bench/bench.md"
