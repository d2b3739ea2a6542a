#!/usr/bin/env bash
# Submits a study to SLURM as a chain of jobs:
#   bash launch/slurm/submit_study.sh CONFIG [sbatch options...] [-- key=value overrides...]
# 1. `rsfm study --prepare` runs here, once (every config is checked, the data is written), so
#    the jobs do not race to prepare the same data;
# 2. a pretraining job per preset still to pretrain or convert (`rsfm study --pending-pretrain`):
#    launch/slurm/study_pretrain.sbatch, `--pretrain PRESET` then `--convert PRESET`;
# 3. per preset with unfinished pretrained cells, one array job over those cells (listed by
#    `rsfm study --pending-arrays`, as `--pending --preset P --init pretrained` would; e.g. --array=3,7,8):
#    launch/slurm/study.sbatch runs cell i in array task i, after that preset's own pretraining
#    job succeeded (--dependency=afterok; --kill-on-invalid-dep cancels the array when it fails),
#    or at once when the preset's backbone is converted already. A failed pretraining thus
#    cancels its own preset's cells only;
# 4. one array job over every unfinished scratch cell (`--pending --init scratch`), with no
#    dependency: scratch cells need no pretraining;
# 5. `rsfm study --collect`, queued with --dependency=afterany on every array and pretraining
#    job: it runs when they have ended, failed or cancelled ones included, and tabulates whatever
#    results exist.
# sbatch options (partition, account, `--gpus-per-node=0 --cpus-per-task=2` on CPU nodes) go to
# every job; the overrides after `--` go to every `rsfm study` call. Job logs land in the current
# directory, config paths are relative to the repository (RSFM_ROOT). Prints one line per job:
# "pretrain <preset> <id>", "array <preset> <id>", "array scratch <id>" (arrays only where cells
# are unfinished), "collect <id>". Running it again submits only the work that is missing:
# finished stages are not submitted, unfinished ones resume from their newest checkpoint.
#   MAX_PARALLEL   run at most this many cells of each array at once (throttle `%K`; default: no limit)
#   GPUS_PER_NODE  ranks per node of each job (default: the GPUs SLURM allocates)
set -euo pipefail
usage="usage: submit_study.sh CONFIG [sbatch options...] [-- key=value overrides...]"
CONFIG=${1:?$usage}
shift
sbatch_opts=()
overrides=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then shift; overrides=("$@"); break; fi
  sbatch_opts+=("$1"); shift
done

RSFM_ROOT=${RSFM_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
[ -n "${VIRTUAL_ENV:-}" ] || source "$RSFM_ROOT/launch/setup_env.sh"
# The jobs inherit this environment (sbatch's default --export=ALL): CONFIG, RSFM_ROOT and the
# activated virtual environment reach study.sbatch without being passed again.
export CONFIG RSFM_ROOT
study() { (cd "$RSFM_ROOT" && rsfm study --config "$CONFIG" "$@" "${overrides[@]}"); }

study --prepare
cells=$(study --count | tail -n 1)
if ! [[ $cells =~ ^[0-9]+$ ]] || [ "$cells" -eq 0 ]; then
  echo "submit_study.sh: rsfm study --count gave '$cells', expected a positive number of cells" >&2
  exit 1
fi

# --parsable prints "jobid" or "jobid;cluster".
submit() { local id; id=$(sbatch --parsable "$@"); echo "${id%%;*}"; }

declare -A pretrain_id=()
pretrain_ids=()
pretrain_lines=()
# The last line of each listing is the answer (anything before it would be library chatter).
read -r -a presets <<<"$(study --pending-pretrain | tail -n 1)"
for preset in "${presets[@]}"; do
  export PRESET=$preset  # study_pretrain.sbatch reads it (sbatch passes the environment on)
  id=$(submit "${sbatch_opts[@]}" --job-name="rsfm-study-pretrain-$preset" \
         "$RSFM_ROOT/launch/slurm/study_pretrain.sbatch" "${overrides[@]}")
  pretrain_id[$preset]=$id
  pretrain_ids+=("$id")
  pretrain_lines+=("pretrain $preset $id")
done

# array NAME CELLS [sbatch options...]: one array job over CELLS (an --array list), if any.
all_ids=("${pretrain_ids[@]}")
array_lines=()
pending_count=0
array() {
  local name=$1 cells=$2 id
  shift 2
  [ -n "$cells" ] || return 0
  id=$(submit "${sbatch_opts[@]}" --job-name="rsfm-study-$name" --array="$cells${MAX_PARALLEL:+%$MAX_PARALLEL}" \
         "$@" "$RSFM_ROOT/launch/slurm/study.sbatch" "${overrides[@]}")
  all_ids+=("$id")
  array_lines+=("array $name $id")
  pending_count=$((pending_count + $(tr ',' '\n' <<<"$cells" | grep -c .)))
}
# One listing, one line per array: "<preset> <cells>" per preset's pretrained cells, then
# "scratch <cells>"; lines of any other shape would be library chatter.
listing=$(study --pending-arrays)
while read -r name cells_of; do
  after=()
  if [ "$name" != scratch ] && [ -n "${pretrain_id[$name]:-}" ]; then
    after=(--dependency="afterok:${pretrain_id[$name]}" --kill-on-invalid-dep=yes)
  fi
  array "$name" "$cells_of" "${after[@]}"
done < <(grep -E '^[A-Za-z0-9_.-]+ [0-9][0-9,-]*$' <<<"$listing" || true)

collect_cmd="cd $(printf %q "$RSFM_ROOT") && exec $(printf %q "$(command -v rsfm)") study"
collect_cmd+="$(printf ' %q' --config "$CONFIG" --collect "${overrides[@]}")"
collect_after=""
[ ${#all_ids[@]} -eq 0 ] || collect_after="afterany:$(IFS=:; echo "${all_ids[*]}")"
collect_id=$(submit "${sbatch_opts[@]}" --job-name=rsfm-study-collect --nodes=1 --ntasks=1 \
               --output=slurm-%x-%j.out ${collect_after:+--dependency="$collect_after"} --wrap "$collect_cmd")
echo "[rsfm] study $CONFIG: $cells cells, $pending_count unfinished," \
     "${#pretrain_lines[@]} pretraining job(s), ${#array_lines[@]} array job(s)"
for line in "${pretrain_lines[@]}" "${array_lines[@]}"; do echo "$line"; done
echo "collect $collect_id"
