#!/usr/bin/env bash
# The GPU check of issue 21 ("## GPU"): one prepared script for one CUDA GPU machine.
#
#   bash bench/gpu_check.sh [OUT_DIR]        (OUT_DIR: $OUT if set, else /tmp/cxrdet-gpu-check)
#   QUICK=1 bash bench/gpu_check.sh DIR      (the plumbing only: each bench's --quick CPU smoke run)
#
# Runs from the repository root, each step under its own time limit, everything logged to
# OUT_DIR/log.txt:
#   1. bench/gpu_train.py: the rsna-gpu profile's RetinaNet (legacy_seresnext101_32x4d, P2,
#      512 px) on synthetic RSNA-size images: training img/s and peak GPU memory for one knob at a
#      time (train.deterministic / cudnn.benchmark, AMP, channels_last, batch size, the
#      se_resnext50-class backbone of the issue's 400 img/s goal, P2 off), train_detector's own
#      fold path (3 short epochs through `fit` with the profile's 8 loader workers, the validation
#      pass, the 6-view TTA predictions), the loader alone (8 and 16 workers), the two-stage
#      family, where a step's time goes (GroupNorm heads, loss, encoder alone) and the projected
#      time of one real RSNA fold -> train.json, train-details.json (written after every measure)
#   2. bench/detector.py --device cuda at the profile's shape (legacy_seresnext101_32x4d, 512 px,
#      batch 16, 8 loader workers), its four modes (fp32, AMP, channels_last, both) -> detector.json
#   3. gpu.json: both reports with the machine (GPU, driver, torch, CUDA, cuDNN), what the
#      repository's bench/results/gpu.json holds.
# bench/serving.py is not run: it packages the model with cxrdet's installed distribution
# metadata (every dependency pinned: the project must be pip-installed, with MLflow's server
# stack), which a bare GPU image lacks (bench/RESULTS.md, "## GPU (H200)").
#
# Python: $PYTHON, else python3 if it imports torch, else .venv/bin/python. Where cxrdet's
# non-torch dependencies are missing (a bare GPU image: torch, timm, numpy, pandas, opencv are
# there), the wheels in .whl/ are installed with `pip --target /tmp/site` and
# PYTHONPATH=/tmp/site:src is used (the project itself is not installed: its torch pins would
# not match the image's). Fill .whl/ on a machine with internet (Python 3.12, x86-64):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing_extensions==4.16.0 albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 \
#     stringzilla==5.3.2 pydicom==3.0.2
# Needs: one CUDA GPU with ~70 GB free, 16 CPU cores for the loader rows, ~11 minutes (H200).
# Results of 2026-12-04 on one H200: bench/results/gpu.json, bench/RESULTS.md "## GPU (H200)".
set -u -o pipefail
cd "$(dirname "$0")/.."
DEST=${1:-${OUT:-/tmp/cxrdet-gpu-check}}
mkdir -p "$DEST"
LOG="$DEST/log.txt"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
say() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if python3 -c "import torch" 2>/dev/null; then PY=python3; else PY=.venv/bin/python; fi
fi
if PYTHONPATH=src "$PY" -c "import pydantic, albumentations, pydicom, cxrdet" 2>/dev/null; then
  export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
elif [ -d .whl ]; then
  say "installing .whl/*.whl into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tee -a "$LOG" || { say "wheel install failed"; exit 2; }
  export PYTHONPATH="/tmp/site:src"
else
  say "cxrdet's dependencies are missing and there is no .whl/ (see this script's header)"; exit 2
fi

say "python: $PY; PYTHONPATH=$PYTHONPATH; $(nproc) CPUs"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 | tee -a "$LOG"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import torch, timm, numpy, pandas, cv2
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
      f"timm {timm.__version__}, numpy {numpy.__version__}, pandas {pandas.__version__}, opencv {cv2.__version__}; "
      f"cuda available: {torch.cuda.is_available()}")
EOF

if [ -n "${QUICK:-}" ]; then
  TRAIN=(--quick); DETECTOR=(--quick); TRAIN_LIMIT=900; DETECTOR_LIMIT=900
else
  TRAIN=(--device cuda --budget 360)
  DETECTOR=(--device cuda --backbone legacy_seresnext101_32x4d --size 512 --batch 16 --workers 8)
  TRAIN_LIMIT=450; DETECTOR_LIMIT=220
fi

say "1. bench/gpu_train.py ${TRAIN[*]}"
timeout "$TRAIN_LIMIT" "$PY" bench/gpu_train.py "${TRAIN[@]}" --json "$DEST/train.json" \
  --details "$DEST/train-details.json" 2>&1 | tee -a "$LOG"
say "gpu_train.py exit $?"

say "2. bench/detector.py ${DETECTOR[*]}"
timeout "$DETECTOR_LIMIT" "$PY" bench/detector.py "${DETECTOR[@]}" --json "$DEST/detector.json" 2>&1 | tee -a "$LOG"
say "detector.py exit $?"

say "3. $DEST/gpu.json"
"$PY" - "$DEST" <<'EOF' 2>&1 | tee -a "$LOG"
import json, subprocess, sys
from pathlib import Path
import torch
dest = Path(sys.argv[1])
def read(name):
    path = dest / name
    return json.loads(path.read_text()) if path.exists() else None
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
except (OSError, subprocess.SubprocessError):
    smi = None
cuda = torch.cuda.is_available()
result = {
    "machine": {"nvidia_smi": smi, "torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if cuda else None,
                "gpu": torch.cuda.get_device_name(0) if cuda else None},
    "train": read("train.json"), "train_details": read("train-details.json"), "detector": read("detector.json"),
    "serving": "not run: bench/serving.py needs the project pip-installed (pip_requirements pins cxrdet's installed "
               "dependencies) and MLflow's server stack, which a bare GPU image lacks",
}
(dest / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
print(f"wrote {dest / 'gpu.json'}: train {'ok' if result['train'] else 'missing'}, "
      f"detector {'ok' if result['detector'] else 'missing'}")
EOF
say "done"
