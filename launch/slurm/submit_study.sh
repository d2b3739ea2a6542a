#!/usr/bin/env bash
# Submits a study to SLURM as a chain of jobs:
#   bash launch/slurm/submit_study.sh CONFIG [sbatch options...] [-- key=value overrides...]
# 1. `rsfm study --prepare` runs here, once (every config is checked, the data is written), so
#    the jobs do not race to prepare the same data;
# 2. a pretraining job per preset still to pretrain or convert (`rsfm study --pending-pretrain`):
#    launch/slurm/study_pretrain.sbatch, `--pretrain PRESET` then `--convert PRESET`;
# 3. one array job over the unfinished cells (`rsfm study --pending`, e.g. --array=3,7,8):
#    launch/slurm/study.sbatch runs cell i in array task i, after every pretraining job of step 2
#    succeeded (--dependency=afterok; --kill-on-invalid-dep cancels it when one fails);
# 4. `rsfm study --collect`, queued with --dependency=afterany on the array (or on the
#    pretraining jobs when no cell is left): it runs when they have ended, failed ones included,
#    and tabulates whatever results exist.
# sbatch options (partition, account, `--gpus-per-node=0 --cpus-per-task=2` on CPU nodes) go to
# every job; the overrides after `--` go to every `rsfm study` call. Job logs land in the current
# directory, config paths are relative to the repository (RSFM_ROOT). Prints one line per job:
# "pretrain <preset> <id>", "array <id>" (or "array none" when every cell is finished),
# "collect <id>". Running it again submits only the work that is missing: finished stages are
# not submitted, unfinished ones resume from their newest checkpoint.
#   MAX_PARALLEL   run at most this many cells at once (array throttle `%K`; default: no limit)
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

pretrain_ids=()
pretrain_lines=()
# The last line of each listing is the answer (anything before it would be library chatter).
read -r -a presets <<<"$(study --pending-pretrain | tail -n 1)"
for preset in "${presets[@]}"; do
  export PRESET=$preset  # study_pretrain.sbatch reads it (sbatch passes the environment on)
  id=$(submit "${sbatch_opts[@]}" --job-name="rsfm-study-pretrain-$preset" \
         "$RSFM_ROOT/launch/slurm/study_pretrain.sbatch" "${overrides[@]}")
  pretrain_ids+=("$id")
  pretrain_lines+=("pretrain $preset $id")
done

pending=$(study --pending | tail -n 1)
after_pretrain=()
if [ ${#pretrain_ids[@]} -gt 0 ]; then
  ids=$(IFS=:; echo "${pretrain_ids[*]}")
  after_pretrain=(--dependency="afterok:$ids" --kill-on-invalid-dep=yes)
fi
array_id=none
if [ -n "$pending" ]; then
  array_id=$(submit "${sbatch_opts[@]}" --array="$pending${MAX_PARALLEL:+%$MAX_PARALLEL}" "${after_pretrain[@]}" \
               "$RSFM_ROOT/launch/slurm/study.sbatch" "${overrides[@]}")
  collect_after="afterany:$array_id"
elif [ ${#pretrain_ids[@]} -gt 0 ]; then
  collect_after="afterany:$(IFS=:; echo "${pretrain_ids[*]}")"
else
  collect_after=""
fi

collect_cmd="cd $(printf %q "$RSFM_ROOT") && exec $(printf %q "$(command -v rsfm)") study"
collect_cmd+="$(printf ' %q' --config "$CONFIG" --collect "${overrides[@]}")"
collect_id=$(submit "${sbatch_opts[@]}" --job-name=rsfm-study-collect --nodes=1 --ntasks=1 \
               --output=slurm-%x-%j.out ${collect_after:+--dependency="$collect_after"} --wrap "$collect_cmd")
pending_count=$(tr ',' '\n' <<<"$pending" | grep -c . || true)
echo "[rsfm] study $CONFIG: $cells cells, $pending_count unfinished, ${#pretrain_ids[@]} pretraining job(s)"
for line in "${pretrain_lines[@]}"; do echo "$line"; done
echo "array $array_id"
echo "collect $collect_id"
