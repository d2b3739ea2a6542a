#!/usr/bin/env bash
# Command 1 of the README: set up the environment (first run only), then run the main job on
# synthetic data. Outputs go to $RUN_DIR (default runs/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
RUN_DIR="${RUN_DIR:-runs/quickstart}"
mkdir -p "$RUN_DIR"

stage() { echo; echo "=== [quickstart] $*"; }

stage "1/2 backbone presets (parameters and GFLOPs per 224 px image)"
rsfm models | tee "$RUN_DIR/models.txt"

stage "2/2 one MAE training step of the debug preset"
python - <<'PY'
import torch
from rsfm_ds.models.mae import create_mae

torch.manual_seed(0)
mae = create_mae("debug")
opt = torch.optim.AdamW(mae.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
imgs = torch.randn(4, 3, 224, 224)
loss, pred, mask = mae(imgs)
loss.backward()
opt.step()
print(f"debug MAE step: loss {loss.item():.4f}, pred {tuple(pred.shape)}, "
      f"masked {int(mask.sum().item())} of {mask.numel()} patches")
PY
echo
echo "[quickstart] done; outputs in $RUN_DIR"
