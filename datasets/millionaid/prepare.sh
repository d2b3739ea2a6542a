#!/usr/bin/env bash
# MillionAID -> WebDataset shards + manifest.json for configs/pretrain/*.yaml (data.shards).
# Verifies the copy, then runs `rsfm shards millionaid` and `rsfm shards verify`.
#   ROOT           the release root: train/ (class tree) and, optionally, test/      (required)
#   OUT            output folder; the shards go to OUT/shards   (default data/millionaid)
#   IMAGES         all: train + test images (the paper's pretraining set; the default when
#                  ROOT/test exists) | train: the labelled train images only
#   WORKERS        shard writer processes                       (default: all cores)
#   MAXCOUNT       samples per shard at most                    (default 1000)
#   MAX_SIDE       re-encode images whose longer side exceeds this many px (default: keep bytes)
#   EXPECT_COUNTS  official | none: compare file counts with the release's (default official)
#   MANIFEST       checksum manifest to check the copy against (rsfm datasets manifest)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
ROOT="$(abspath "${ROOT:?set ROOT to the MillionAID root (datasets/millionaid/README.md)}")"
OUT="$(out_path data/millionaid)"
if [ -d "$ROOT/test" ]; then IMAGES="${IMAGES:-all}"; else IMAGES="${IMAGES:-train}"; fi
case "$IMAGES" in
  all) splits=(train test) ;;
  train) splits=(train) ;;
  *) echo "datasets/millionaid/prepare.sh: IMAGES must be all or train, got '$IMAGES'" >&2; exit 2 ;;
esac

verify_copy millionaid --splits "${splits[@]}"

src="$ROOT"
split=train
if [ "$IMAGES" = all ]; then
  # The shard writer reads one split folder whose images sit 2-3 folders deep (the class tree).
  # OUT/source/all/ links the train class tree and puts test/ under the pseudo-class
  # unlabelled/test, so both go into one set of shards (labels are metadata in pretraining).
  src="$OUT/source"
  split=all
  stage "linking train/ and test/ into one split folder -> $src/all"
  mkdir -p "$src/all/unlabelled"
  for top in "$ROOT"/train/*/; do
    ln -sfn "${top%/}" "$src/all/$(basename "$top")"
  done
  ln -sfn "$ROOT/test" "$src/all/unlabelled/test"
fi

stage "shards ($IMAGES images) -> $OUT/shards"
args=(shards millionaid --root "$src" --split "$split" --out "$OUT/shards" --workers "${WORKERS:-$(nproc)}"
      --maxcount "${MAXCOUNT:-1000}")
[ -z "${MAX_SIDE:-}" ] || args+=(--max-side "$MAX_SIDE")
rsfm "${args[@]}"
rsfm shards verify "$OUT/shards/manifest.json" --quick

stage "done"
echo "shards and manifest: $OUT/shards"
if [ "$(realpath -m "$OUT/shards/manifest.json")" != "$(realpath -m data/millionaid/shards/manifest.json)" ]; then
  echo "configs/pretrain/*.yaml read data/millionaid/shards/manifest.json: pretrain with the override"
  echo "  data.shards=$OUT/shards/manifest.json"
fi
