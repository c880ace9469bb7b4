#!/usr/bin/env bash
# Submit partitioned data prep: tokenizer -> array of N tokenize parts -> merge, chained with afterok.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<USAGE
Usage: launch/slurm_prep.sh [--parts N] [--sbatch OPT]... -- LAI_PREP_ARGS...

Submits three jobs of launch/slurm_prep.sbatch and prints their ids:
  1. tokenizer   lai-prep tokenizer LAI_PREP_ARGS
  2. parts       array 0..N-1, task K: lai-prep LAI_PREP_ARGS --num-parts N --part K  (afterok:1)
  3. merge       lai-prep merge OUT                                                  (afterok:2)
LAI_PREP_ARGS must contain --out OUT. Logs: lai-prep-<jobid>.out in the current directory.

Options:
  --parts N      number of parts / array tasks (default 8)
  --sbatch OPT   extra option for every sbatch call (repeatable), e.g. --sbatch --partition=cpu
                 --sbatch --cpus-per-task=16
  -h, --help     this text

Example:
  launch/slurm_prep.sh --parts 16 -- --source 'jsonl:corpus/*.jsonl' --out data/web
USAGE
}

parts=8
sbatch_opts=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --parts) [[ $# -ge 2 ]] || lai_die "--parts needs a value"; parts="$2"; shift 2 ;;
        --sbatch) [[ $# -ge 2 ]] || lai_die "--sbatch needs a value"; sbatch_opts+=("$2"); shift 2 ;;
        --) shift; break ;;
        *) lai_die "unknown option '$1' (lai-prep's arguments go after --; see --help)" ;;
    esac
done
[[ "$parts" =~ ^[1-9][0-9]*$ ]] || lai_die "--parts: '$parts' is not a positive integer"
out=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --out) out="${args[i + 1]:-}" ;;
        --out=*) out="${args[i]#--out=}" ;;
    esac
done
[[ -n "$out" ]] || { usage >&2; lai_die "lai-prep's arguments (after --) need --out OUT"; }
command -v sbatch >/dev/null 2>&1 || lai_die "sbatch not found: run this on a Slurm login node"

script="$LAI_ROOT/launch/slurm_prep.sbatch"
submit() { sbatch --parsable "${sbatch_opts[@]}" "$@" | cut -d';' -f1; }
tok="$(submit "$script" tokenizer "$@")"
arr="$(submit --dependency="afterok:$tok" --kill-on-invalid-dep=yes --array="0-$((parts - 1))" "$script" part "$@")"
merge="$(submit --dependency="afterok:$arr" --kill-on-invalid-dep=yes "$script" merge "$out")"
echo "tokenizer job $tok -> parts array job $arr (0-$((parts - 1))) -> merge job $merge"
echo "watch: squeue -j $tok,$arr,$merge    result: $out/manifest.json"
