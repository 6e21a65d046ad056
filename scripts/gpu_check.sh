#!/usr/bin/env bash
# One-shot GPU check for a lent CUDA machine (no HyperSpy/napari/dask there):
# runs the GPU-marked tests and the --speed benchmark on CUDA, then a short full-size
# detection run, writing logs under ${OUT:-gpu_out}.
# Usage (from the repo root): bash scripts/gpu_check.sh
set -uo pipefail
OUT="${OUT:-gpu_out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ -d .whl ]; then  # pure-Python wheels carried along (pytest, tqdm, ...)
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
if python3 -c "import pytest" 2>/dev/null; then
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_cvae3d.py 2>&1 | tee "$OUT/gpu_tests.log"
fi
python3 -m eelsanom bench --speed --methods cvae,pca,rx --device cuda --out "$OUT/speed" 2>&1 | tee "$OUT/speed.log"
python3 - <<'PY' 2>&1 | tee "$OUT/full.log"
from eelsanom.bench import Condition, run_benchmark
base = dict(shape=(192, 192), window="bfo", anomaly="shift", anomaly_shape="clusters", concentration=0.01, dose=200.0)
conds = [Condition(f"shift {s:g} eV", {**base, "magnitude": s}) for s in (0.9, 1.5)]
run_benchmark("gpu_out/full", quick=False, methods=["cvae", "pca", "rx"], device="cuda", conditions=conds)
PY
