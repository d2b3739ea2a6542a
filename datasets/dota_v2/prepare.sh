#!/usr/bin/env bash
# DOTA v2.0 -> multi-scale 1024 px patches for configs/det/dota2_*.yaml (the published recipe:
# mmrotate's ms_trainval / ms_test split). Verifies the copy, then cuts train, val and (if present)
# test with `rsfm dota split`.
#   ROOT           the DOTA v2.0 root: {train,val}/{images,labelTxt}, test/images  (required)
#   OUT            patch folders OUT/{train,val,test}   (default data/dota2/split_ms)
#   SIZE, GAP      patch side and overlap in px          (default 1024, 500)
#   RATES          scales                                (default "0.5 1.0 1.5"; single scale: RATES=1.0 GAP=200)
#   RULE           mmrotate | devkit: what a cut object becomes (default mmrotate, the recipe's)
#   WORKERS        images split in parallel              (default: all cores)
#   EXPECT_COUNTS  official | none: compare file counts with the release's (default official)
#   MANIFEST       checksum manifest to check the copy against (rsfm datasets manifest)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
ROOT="$(abspath "${ROOT:?set ROOT to the DOTA v2.0 root (datasets/dota_v2/README.md)}")"
OUT="$(out_path data/dota2/split_ms)"
read -r -a rates <<< "${RATES:-0.5 1.0 1.5}"

verify_copy dota_v2

for split in train val test; do
  [ -d "$ROOT/$split/images" ] || continue
  stage "$split: patches of ${SIZE:-1024} px, gap ${GAP:-500}, rates ${rates[*]}, rule ${RULE:-mmrotate} -> $OUT/$split"
  rsfm dota split --src "$ROOT/$split" --out "$OUT/$split" --size "${SIZE:-1024}" --gap "${GAP:-500}" \
    --rates "${rates[@]}" --rule "${RULE:-mmrotate}" --workers "${WORKERS:-$(nproc)}" --dataset dota2
done

stage "done"
echo "patches: $OUT/{train,val$([ -d "$ROOT/test/images" ] && echo ,test)}"
if [ "$(realpath -m "$OUT")" != "$(realpath -m data/dota2/split_ms)" ] || \
   [ "$(realpath -m "$ROOT")" != "$(realpath -m data/dota2)" ]; then
  echo "configs/det/dota2_*.yaml read data/dota2/split_ms and data/dota2/val/labelTxt: train with"
  echo "  data.train_dirs=[$OUT/train] data.val_dir=$OUT/val data.val_full_labels=$ROOT/val/labelTxt"
fi
