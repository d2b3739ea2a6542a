# Sourced by datasets/*/prepare.sh. Makes the repository root the working directory (the configs'
# data paths are relative to it), activates the environment, and defines the helpers below.
# Relative ROOT / OUT / MANIFEST values are taken relative to the directory the script was
# started from; the OUT defaults are relative to the repository root.
_rsfm_caller="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -n "${VIRTUAL_ENV:-}" ] || source launch/setup_env.sh

# abspath PATH: PATH, absolute, resolved against the caller's directory.
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$_rsfm_caller/$1" ;; esac; }

# out_path DEFAULT: $OUT made absolute, or DEFAULT (relative to the repository root).
out_path() { if [ -n "${OUT:-}" ]; then abspath "$OUT"; else printf '%s\n' "$1"; fi; }

stage() { echo; echo "=== [prepare] $*"; }

# verify_copy NAME [ARGS]: `rsfm datasets verify` on $ROOT with $EXPECT_COUNTS (official | none)
# and, if set, the checksum manifest $MANIFEST; stops the script on an error.
verify_copy() {
  local name="$1"
  shift
  local args=(datasets verify "$name" --root "$ROOT" --expect-counts "${EXPECT_COUNTS:-official}" "$@")
  [ -z "${MANIFEST:-}" ] || args+=(--manifest "$(abspath "$MANIFEST")")
  stage "verifying $ROOT (rsfm ${args[*]})"
  rsfm "${args[@]}"
}

# link_data PATH: the configs read PATH; make it a link to $ROOT, unless it already is $ROOT.
# An existing folder that is not $ROOT is left alone and the config override is printed instead.
link_data() {
  local path="$1" field="$2"
  if [ "$(realpath -m "$path")" = "$(realpath "$ROOT")" ]; then
    echo "[prepare] $path already is $ROOT"
  elif [ -L "$path" ] || [ ! -e "$path" ]; then
    mkdir -p "$(dirname "$path")"
    ln -sfn "$ROOT" "$path"
    echo "[prepare] linked $path -> $ROOT"
  else
    echo "[prepare] $path exists and is not $ROOT: train with the override $field=$ROOT"
  fi
}
