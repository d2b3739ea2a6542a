#!/usr/bin/env bash
# LoveDA for configs/seg/loveda_*.yaml. The training reads the release tree as it is (no crops:
# random 512 px crops in training, sliding windows in evaluation): this verifies the copy and
# links it where the configs look.
#   ROOT           the LoveDA root: {Train,Val,Test}/{Urban,Rural}/...  (required)
#   OUT            where the configs read it (data.root)  (default data/LoveDA): made a link to ROOT
#   EXPECT_COUNTS  official | none: compare file counts with the release's (default official)
#   MANIFEST       checksum manifest to check the copy against (rsfm datasets manifest)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
ROOT="$(abspath "${ROOT:?set ROOT to the LoveDA root (datasets/loveda/README.md)}")"
OUT="$(out_path data/LoveDA)"

verify_copy loveda

stage "done"
link_data "$OUT" data.root
[ "$(realpath -m "$OUT")" = "$(realpath -m data/LoveDA)" ] || echo "configs read data/LoveDA: train with data.root=$OUT"
