#!/usr/bin/env bash
# ISPRS Potsdam -> 512 px crops (mmseg layout) for configs/seg/potsdam_*.yaml. Verifies the copy,
# then runs `rsfm potsdam prepare`.
#   ROOT           the release root: 2_Ortho_RGB/, 5_Labels_all_noBoundary/ (and/or 5_Labels_all/)  (required)
#   OUT            crops: OUT/{img_dir,ann_dir}/{train,val}, OUT/prepare.json  (default data/potsdam_prepared)
#   PROTOCOL       5: clutter ignored, as RVSA (default) | 6: clutter scored
#   ERODED         1: the eroded labels of 5_Labels_all_noBoundary, as RVSA and mmseg (default) | 0: 5_Labels_all
#   MODALITY       rgb (default) | irrg
#   CROP, STRIDE   crop side and step in px               (default 512, 256)
#   EXPECT_COUNTS  official | none: compare file counts with the release's (default official)
#   MANIFEST       checksum manifest to check the copy against (rsfm datasets manifest)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
ROOT="$(abspath "${ROOT:?set ROOT to the Potsdam root (datasets/potsdam/README.md)}")"
OUT="$(out_path data/potsdam_prepared)"
PROTOCOL="${PROTOCOL:-5}"

verify_copy potsdam

stage "crops of ${CROP:-512} px every ${STRIDE:-256} px, protocol $PROTOCOL -> $OUT"
args=(potsdam prepare --root "$ROOT" --out "$OUT" --protocol "$PROTOCOL" --crop "${CROP:-512}"
      --stride "${STRIDE:-256}" --modality "${MODALITY:-rgb}")
[ "${ERODED:-1}" = 0 ] || args+=(--eroded)
rsfm "${args[@]}"

stage "done"
echo "crops: $OUT/img_dir, $OUT/ann_dir; what was prepared: $OUT/prepare.json"
overrides=()
[ "$(realpath -m "$OUT")" = "$(realpath -m data/potsdam_prepared)" ] || overrides+=("data.root=$OUT")
[ "$PROTOCOL" = 5 ] || overrides+=("data.num_classes=$PROTOCOL")
[ "${CROP:-512}" = 512 ] || overrides+=("data.crop_size=$CROP backbone.img_size=$CROP")
if [ "${#overrides[@]}" -gt 0 ]; then
  echo "configs/seg/potsdam_*.yaml expect data/potsdam_prepared, 5 classes, 512 px: train with"
  echo "  ${overrides[*]}"
fi
