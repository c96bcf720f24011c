#!/usr/bin/env bash
# GPU smoke check (one GPU): bf16-mixed extraction vs float32 CPU extraction of the same rows, then the
# batched probe on the GPU vs on the CPU. Offline: random-init open_clip ViT-B/32 on synthetic scenes.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 WANDB_MODE=offline SPATIAL_PROBING_CACHE=$out/cache
nvidia-smi -L
python -c "import torch, lightning, open_clip; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
common=(--config configs/extract/demo_clip_random.yaml --data.scenes_per_relation 10 --trainer.enable_progress_bar false)
/usr/bin/time -f "gpu bf16 extract: %e s" python -m spatial_probing.cli extract --config configs/trainer/gpu_bf16.yaml "${common[@]}" --feature_root "$out/gpu"
/usr/bin/time -f "cpu fp32 extract: %e s" python -m spatial_probing.cli extract --config configs/trainer/cpu.yaml "${common[@]}" --feature_root "$out/cpu"
for acc in gpu cpu; do
  python -m spatial_probing.cli fit --config configs/probe/demo.yaml --data.feature_root "$out/gpu" \
    --data.task.min_count 8 --data.n_splits 3 --trainer.accelerator $acc --trainer.logger false --out_dir "$out/fit_$acc" > "$out/fit_$acc.log" 2>&1
done
python - "$out" <<'PY'
import sys, pathlib, numpy as np
from spatial_probing.features.entry import load_entry
out = pathlib.Path(sys.argv[1])
(g,), (c,) = ([load_entry(p.parent) for p in (out / d).rglob("meta.json")] for d in ("gpu", "cpu"))
fg, fc = np.asarray(g.features, np.float64), np.asarray(c.features, np.float64)
cos = (fg * fc).sum(1) / np.linalg.norm(fg, axis=1) / np.linalg.norm(fc, axis=1)
print(f"entries: gpu {fg.shape} precision {g.meta['key']['precision']}, cpu {fc.shape}; min cosine bf16-gpu vs fp32-cpu {cos.min():.5f}")
a, b = ((out / f"fit_{d}" / "results.csv").read_text().splitlines() for d in ("gpu", "cpu"))
vals = lambda rows: np.array([float(r.split(",")[8]) for r in rows[1:]])
print(f"probe results rows {len(a) - 1}; max |gpu - cpu| metric value {np.abs(vals(a) - vals(b)).max():.2e}")
PY
