#!/usr/bin/env bash
# Command 1 of the README: set up the environment (first run only), then run the main job on
# synthetic data in the real dataset formats. Every stage prints where its outputs are; a re-run
# skips the stages whose outputs are complete (delete a stage's folder to redo it).
#   RUN_DIR   outputs                       (default runs/quickstart)
#   NPROC     ranks for DeepSpeed stages    (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
RUN_DIR="${RUN_DIR:-runs/quickstart}"
NPROC="${NPROC:-2}"
DATA="$RUN_DIR/data"
mkdir -p "$RUN_DIR" "$DATA"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}"

stage() { echo; echo "=== [quickstart] $*"; }
done_or() { [ -e "$1" ] && echo "[quickstart] complete, skipping ($1)"; }

stage "1/11 backbone presets -> $RUN_DIR/models.txt"
rsfm models | tee "$RUN_DIR/models.txt"

stage "2/11 synthetic MillionAID (real layout) -> $DATA/millionaid"
done_or "$DATA/millionaid/.complete" || {
  rm -rf "$DATA/millionaid"
  rsfm synth millionaid --out "$DATA/millionaid" --images 256 --seed 0
  touch "$DATA/millionaid/.complete"
}

stage "3/11 WebDataset shards (re-runs keep verified shards) -> $DATA/millionaid-shards"
rsfm shards millionaid --root "$DATA/millionaid" --out "$DATA/millionaid-shards" --maxcount 64 --workers 2

stage "4/11 MAE pretraining, debug preset, ZeRO-3 on $NPROC ranks -> $RUN_DIR/pretrain"
done_or "$RUN_DIR/pretrain/checkpoints/step_00000080/COMPLETE" || \
  NPROC_PER_NODE="$NPROC" MASTER_PORT="${MASTER_PORT:-29517}" bash launch/pretrain.sh \
    run_dir="$RUN_DIR/pretrain" data.shards="$DATA/millionaid-shards/manifest.json" \
    train.epochs=10 checkpoint.every_steps=40 log.every_steps=10 --resume auto
tail -n 2 "$RUN_DIR/pretrain/train.log"

stage "5/11 conversion: ZeRO-3 checkpoint -> backbone safetensors -> $RUN_DIR/convert"
done_or "$RUN_DIR/convert/backbone.safetensors" || {
  rsfm convert zero-to-fp32 "$RUN_DIR/pretrain/checkpoints" "$RUN_DIR/convert/mae_fp32"
  rsfm convert mae-to-backbone "$RUN_DIR/pretrain/checkpoints" "$RUN_DIR/convert/backbone.safetensors" --img-size 256
}
rsfm convert inspect "$RUN_DIR/convert/backbone.safetensors"

stage "6/11 synthetic DOTA v2.0, Potsdam and LoveDA (real layouts) -> $DATA"
done_or "$DATA/dota/.complete" || {
  rm -rf "$DATA/dota"
  rsfm synth dota --out "$DATA/dota/train" --images 64 --size 256 --seed 0
  rsfm synth dota --out "$DATA/dota/val" --images 16 --size 256 --seed 1 --first-id 1000
  touch "$DATA/dota/.complete"
}
done_or "$DATA/potsdam_prepared/prepare.json" || {
  rsfm synth potsdam --out "$DATA/potsdam" --tiles 4 --seed 0 --size 1024
  rsfm potsdam prepare --root "$DATA/potsdam" --out "$DATA/potsdam_prepared" --crop 256 --stride 256
}
done_or "$DATA/loveda/.complete" || {
  rm -rf "$DATA/loveda"
  rsfm synth loveda --out "$DATA/loveda" --images 4 --size 512 --seed 0
  touch "$DATA/loveda/.complete"
}
rsfm datasets verify dota_v2 --root "$DATA/dota" --expect-counts none
rsfm datasets verify potsdam --root "$DATA/potsdam" --expect-counts none
rsfm datasets verify loveda --root "$DATA/loveda" --expect-counts none

stage "7/11 detection fine-tuning (Oriented R-CNN) from the pretrained backbone, $NPROC ranks -> $RUN_DIR/det"
done_or "$RUN_DIR/det/checkpoints/step_00000200/COMPLETE" || \
  deepspeed --num_gpus "$NPROC" --master_port "${MASTER_PORT_DET:-29519}" \
    --module rsfm_ds.cli finetune det --config configs/det/dota2_debug.yaml --resume auto \
    run_dir="$RUN_DIR/det" data.train_dirs="[$DATA/dota/train]" data.val_dir="$DATA/dota/val" \
    backbone.pretrained="$RUN_DIR/convert/backbone.safetensors" train.micro_batch_size=2 \
    schedule.by=iter schedule.length=200 schedule.milestones="[160,190]" schedule.warmup=10 \
    eval.every=200 checkpoint.every_steps=200

stage "8/11 detection evaluation of the written Task1 files (rsfm eval det, DOTA devkit protocol)"
rsfm eval det --dets "$RUN_DIR/det/eval/step_00000200/task1" --labels "$DATA/dota/val/labelTxt" \
  --dataset dota2 --json "$RUN_DIR/det/eval_det.json"

stage "9/11 segmentation fine-tuning (UperNet) from the pretrained backbone, $NPROC ranks -> $RUN_DIR/seg"
done_or "$RUN_DIR/seg/checkpoints/step_00000060/COMPLETE" || \
  deepspeed --num_gpus "$NPROC" --master_port "${MASTER_PORT_SEG:-29518}" \
    --module rsfm_ds.cli finetune seg --config configs/seg/potsdam_debug.yaml --resume auto \
    run_dir="$RUN_DIR/seg" data.root="$DATA/potsdam_prepared" \
    backbone.pretrained="$RUN_DIR/convert/backbone.safetensors" schedule.length=60 eval.every=60 \
    checkpoint.every_steps=60 data.save_predictions=true train.num_workers=1

stage "10/11 segmentation evaluation of the saved predictions (rsfm eval seg)"
rsfm eval seg --pred "$RUN_DIR/seg/eval/step_00000060/pred" --label "$DATA/potsdam_prepared/ann_dir/val" \
  --num-classes 5 --ignore-index 255 --json "$RUN_DIR/seg/eval_seg.json"

stage "11/11 report (losses with the detector's components, metrics, held-out overlays) -> $RUN_DIR/report.md"
# Overlays: ground truth beside prediction for 3 validation images of each run, read from the run's
# config.yaml, its Task1 files (detection) and its saved index PNGs (segmentation).
rsfm report --out "$RUN_DIR/report.md" --pretrain "$RUN_DIR/pretrain" \
  --finetune "detection=$RUN_DIR/det" --finetune "segmentation=$RUN_DIR/seg" \
  --eval "detection=$RUN_DIR/det/eval_det.json" --eval "segmentation=$RUN_DIR/seg/eval_seg.json" \
  --overlay-images 3
echo
echo "[quickstart] done; outputs in $RUN_DIR"
