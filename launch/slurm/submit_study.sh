#!/usr/bin/env bash
# Submits a study grid to SLURM as one array job (a task per cell) and a collect job after it:
#   bash launch/slurm/submit_study.sh CONFIG [sbatch options...] [-- key=value overrides...]
# 1. `rsfm study --prepare` runs here, once, so the cells do not race to prepare the same data;
# 2. the number of cells N comes from `rsfm study --count`;
# 3. `sbatch --array=0-(N-1) launch/slurm/study.sbatch` runs cell i in array task i;
# 4. `rsfm study --collect` is queued with --dependency=afterany on the array: it runs when every
#    cell has ended, failed ones included, and tabulates whatever results exist.
# sbatch options (partition, account, `--gpus-per-node=0 --cpus-per-task=2` on CPU nodes) go to
# both jobs; the overrides after `--` go to every `rsfm study` call. Job logs land in the current
# directory, config paths are relative to the repository (RSFM_ROOT). Prints the two job ids
# ("array <id>", "collect <id>"). Running it again resubmits only the work that is missing:
# finished cells are skipped, unfinished ones resume.
#   MAX_PARALLEL   run at most this many cells at once (array throttle `%K`; default: no limit)
#   GPUS_PER_NODE  ranks per node of each cell (default: the GPUs SLURM allocates)
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
range="0-$(( cells - 1 ))${MAX_PARALLEL:+%$MAX_PARALLEL}"

# --parsable prints "jobid" or "jobid;cluster".
array_id=$(sbatch --parsable "${sbatch_opts[@]}" --array="$range" \
             "$RSFM_ROOT/launch/slurm/study.sbatch" "${overrides[@]}")
array_id=${array_id%%;*}
collect_cmd="cd $(printf %q "$RSFM_ROOT") && exec $(printf %q "$(command -v rsfm)") study"
collect_cmd+="$(printf ' %q' --config "$CONFIG" --collect "${overrides[@]}")"
collect_id=$(sbatch --parsable "${sbatch_opts[@]}" --job-name=rsfm-study-collect \
               --nodes=1 --ntasks=1 --output=slurm-%x-%j.out \
               --dependency="afterany:$array_id" --wrap "$collect_cmd")
collect_id=${collect_id%%;*}
echo "[rsfm] study $CONFIG: $cells cells"
echo "array $array_id"
echo "collect $collect_id"
