#!/usr/bin/env bash
# DIOR-R for configs/det/dior_*.yaml. The training reads the release tree as it is (no patches):
# this verifies the copy and links it where the configs look.
#   ROOT           the DIOR-R root (Annotations/, ImageSets/, JPEGImages-trainval/, JPEGImages-test/)  (required)
#   OUT            where the configs read it (data.root)  (default data/dior): made a link to ROOT
#   EXPECT_COUNTS  official | none: compare file counts with the release's (default official)
#   MANIFEST       checksum manifest to check the copy against (rsfm datasets manifest)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
ROOT="$(abspath "${ROOT:?set ROOT to the DIOR-R root (datasets/dior_r/README.md)}")"
OUT="$(out_path data/dior)"

verify_copy dior_r

stage "done"
link_data "$OUT" data.root
if [ ! -f "$ROOT/ImageSets/Main/train.txt" ]; then
  echo "no ImageSets/Main/train.txt: train with the override data.train_splits=[trainval]"
fi
[ "$(realpath -m "$OUT")" = "$(realpath -m data/dior)" ] || echo "configs read data/dior: train with data.root=$OUT"
