#!/usr/bin/env bash
# Launch lai-train on this node through the deepspeed launcher, or torchrun for train.backend=fsdp2
# (one node, or one node of many).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<USAGE
Usage: launch/train.sh [options] CONFIG.yaml [dotted.key=value ...]

Runs 'deepspeed --module pipeline.train CONFIG.yaml key=value ...' (train.backend=fsdp2: torchrun,
with the same ranks and rendezvous; multi-node needs --node_rank or --slurm) with one rank per local device:
every GPU (nvidia-smi, else torch.cuda.device_count(); CUDA_VISIBLE_DEVICES is honoured), or on a
machine without GPUs (or with CUDA_VISIBLE_DEVICES="") \$LAI_CPU_RANKS CPU ranks (default 2, gloo).
OMP_NUM_THREADS defaults to cores / local ranks.

Options:
  --ranks N          ranks on this node (default: detected as above; with --hostfile: the slots)
  --hostfile FILE    multi-node: one "HOST slots=N" line per node (MPI style, as deepspeed reads it)
  --node_rank K      no-SSH multi-node: this node's line in FILE (0-based); run the same command
                     on every node, each with its own K.
                     Without it, --hostfile fans out from this node over pdsh/ssh (passwordless SSH).
  --slurm            inside a Slurm step with one task per node (srun --ntasks-per-node=1): the
                     hostfile comes from \$SLURM_JOB_NODELIST with --ranks (or \$SLURM_GPUS_ON_NODE,
                     or the detected devices) slots per node, written to
                     \$TMPDIR/lai-hostfile.JOBID.NODEID; node rank = \$SLURM_NODEID
  --master_addr A    rendezvous host (default: 127.0.0.1; with --hostfile: \$MASTER_ADDR, else its
                     first host)
  --master_port P    rendezvous port (default: \$MASTER_PORT or 29500)
  --dry-run          check the config and the data for the ranks it would start and print the
                     plan (lai-train --dry-run: resolved config, DeepSpeed JSON, parameters,
                     tokens per step, epochs, memory estimate); start nothing
  --max-restarts N   after a crash (any exit but 0, 2 and 75) start the ranks again, at most N
                     times, resuming from the latest complete checkpoint (default 0)
  -h, --help         this text

Options may come anywhere, before or after CONFIG.yaml and the overrides, as '--opt V' or
'--opt=V'; everything after '--' is CONFIG.yaml and overrides.

Before deepspeed starts any rank, the config and the data are checked once (lai-train --check):
a bad value stops here with one error line.

Examples:
  launch/train.sh configs/tiny_cpu.yaml train.steps=20 run.out_dir=runs/tiny
  # two nodes, no SSH: on node 0 and node 1 respectively (hostfile lists both, e.g. "gpu-a slots=8")
  launch/train.sh --hostfile hosts --node_rank 0 configs/run.yaml
  launch/train.sh --hostfile hosts --node_rank 1 configs/run.yaml

Exit codes are lai-train's: 0 done, 2 bad input, 75 stopped after a checkpoint (re-run to resume).
USAGE
}

ranks=""
hostfile=""
node_rank=""
slurm=""
dry_run=""
max_restarts=0
master_addr="${MASTER_ADDR:-}"
master_port="${MASTER_PORT:-29500}"
positional=()
while [[ $# -gt 0 ]]; do
    arg="$1"; shift
    inline=""
    if [[ "$arg" == --*=* ]]; then                # --opt=value: as '--opt value'
        set -- "${arg#*=}" "$@"
        arg="${arg%%=*}"
        inline=1
    fi
    case "$arg" in
        -h|--help|--slurm|--dry-run) [[ -z "$inline" ]] || lai_die "$arg takes no value" ;;&
        -h|--help) usage; exit 0 ;;
        --slurm) slurm=1 ;;
        --dry-run) dry_run=1 ;;
        --ranks|--hostfile|--node_rank|--master_addr|--master_port|--max-restarts)
            [[ $# -ge 1 ]] || lai_die "$arg needs a value"
            name="${arg#--}"
            declare "${name//-/_}=$1"; shift ;;
        --nproc_per_node|--nproc-per-node|--num_gpus|--num-gpus)
            lai_die "$arg is torchrun's/deepspeed's; here it is --ranks N (ranks on this node)" ;;
        --) positional+=("$@"); break ;;
        -*) lai_die "unknown option '$arg' (see --help)" ;;
        *) positional+=("$arg") ;;
    esac
done
set -- "${positional[@]}"
[[ $# -ge 1 ]] || { usage >&2; lai_die "missing CONFIG.yaml"; }
config="$1"; shift
[[ -f "$config" ]] || lai_die "config file '$config' not found"
for n in ranks node_rank master_port max_restarts; do
    v="${!n}"
    [[ -z "$v" || "$v" =~ ^[0-9]+$ ]] || lai_die "--${n//max_/max-}: '$v' is not a non-negative integer"
done
[[ "$ranks" != "0" ]] || lai_die "--ranks: must be at least 1"

deepspeed="$(lai_tool deepspeed)"
python="$(dirname "$deepspeed")/python"            # the launcher's own interpreter
[[ -x "$python" ]] || python="$(lai_tool python3)"

# Local device count: GPUs (nvidia-smi, else torch), 0 without any or with CUDA_VISIBLE_DEVICES="".
count_gpus() {
    if [[ -v CUDA_VISIBLE_DEVICES && -z "$CUDA_VISIBLE_DEVICES" ]]; then
        echo 0
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        "$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0
    fi
}

if [[ -n "$slurm" ]]; then
    [[ -n "${SLURM_JOB_NODELIST:-}" && -n "${SLURM_NODEID:-}" ]] \
        || lai_die "--slurm: not inside a Slurm step (run it with srun --ntasks-per-node=1 inside sbatch/salloc)"
    [[ -z "$hostfile" && -z "$node_rank" ]] || lai_die "--slurm derives the hostfile and node rank; drop --hostfile/--node_rank"
    [[ "${SLURM_STEP_NUM_TASKS:-1}" == "${SLURM_STEP_NUM_NODES:-1}" && "${SLURM_STEP_NUM_NODES:-1}" == "${SLURM_JOB_NUM_NODES:-1}" ]] \
        || lai_die "--slurm: the step must run one task on each of the job's ${SLURM_JOB_NUM_NODES:-?} nodes (srun --ntasks-per-node=1)"
    slots="${ranks:-${SLURM_GPUS_ON_NODE:-}}"
    if [[ -z "$slots" ]]; then
        slots="$(count_gpus)"
        (( slots > 0 )) || slots="${LAI_CPU_RANKS:-2}"
    fi
    hostfile="${TMPDIR:-/tmp}/lai-hostfile.${SLURM_JOB_ID:-0}.$SLURM_NODEID"
    scontrol show hostnames "$SLURM_JOB_NODELIST" | awk -v s="$slots" '{print $1, "slots=" s}' >"$hostfile"
    node_rank="$SLURM_NODEID"
    ranks=""
fi

ds_args=()
if [[ -n "$hostfile" ]]; then
    [[ -f "$hostfile" ]] || lai_die "hostfile '$hostfile' not found (one 'HOST slots=N' line per node)"
    mapfile -t hosts < <(awk '$1 !~ /^#/ && $2 ~ /^slots=[0-9]+$/ {print $1, substr($2, 7)}' "$hostfile")
    [[ ${#hosts[@]} -gt 0 ]] || lai_die "hostfile '$hostfile' has no 'HOST slots=N' line"
    [[ -n "$master_addr" ]] || master_addr="${hosts[0]%% *}"
    ds_args+=(--hostfile "$hostfile" --master_addr "$master_addr")
    if [[ -n "$node_rank" ]]; then
        (( node_rank < ${#hosts[@]} )) || lai_die "--node_rank $node_rank: '$hostfile' lists only ${#hosts[@]} node(s)"
        ds_args+=(--no_ssh --node_rank "$node_rank")
        local_slots="${hosts[$node_rank]##* }"
    else
        local_slots="${hosts[0]##* }"
    fi
    [[ -z "$ranks" ]] || { ds_args+=(--num_gpus "$ranks"); local_slots="$ranks"; }
    nranks="$local_slots"
    world=0
    for h in "${hosts[@]}"; do world=$(( world + ${ranks:-${h##* }} )); done
    desc="node ${node_rank:-0 (ssh fan-out)} of ${#hosts[@]} from $hostfile, $nranks rank(s) here"
else
    [[ -z "$node_rank" ]] || lai_die "--node_rank needs --hostfile"
    master_addr="127.0.0.1"
    ngpus="$(count_gpus)"
    if (( ngpus > 0 )); then
        if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
            IFS=',' read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
        else
            mapfile -t visible < <(seq 0 $((ngpus - 1)))
        fi
        nranks="${ranks:-${#visible[@]}}"
        (( nranks <= ${#visible[@]} )) || lai_die "--ranks $nranks: only ${#visible[@]} GPU(s) visible"
        devices="$(IFS=','; echo "${visible[*]:0:$nranks}")"
        ds_args+=(--include "localhost:$devices")
        desc="$nranks GPU rank(s) (devices $devices)"
    else
        nranks="${ranks:-${LAI_CPU_RANKS:-2}}"
        [[ "$nranks" =~ ^[1-9][0-9]*$ ]] || lai_die "LAI_CPU_RANKS: '$nranks' is not a positive integer"
        ds_args+=(--num_gpus "$nranks")
        desc="$nranks CPU rank(s) (no GPU found)"
        export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"   # DeepSpeed's "no GPU" guess, said once here
    fi
fi
ds_args+=(--master_port "$master_port")
world="${world:-$nranks}"

cores="${SLURM_CPUS_ON_NODE:-$(nproc)}"
threads=$(( cores / nranks ))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))}"
export PYTHONPATH="$LAI_ROOT${PYTHONPATH:+:$PYTHONPATH}"
echo "launch: $desc, OMP_NUM_THREADS=$OMP_NUM_THREADS, master $master_addr:$master_port"

if [[ -n "$dry_run" ]]; then
    exec "$python" -m pipeline.train --dry-run --world "$world" "$config" "$@"
fi

# Rank 0's node hosts the rendezvous store: say so clearly if the port is taken.
if [[ "${node_rank:-0}" == "0" ]] && lai_port_busy 127.0.0.1 "$master_port"; then
    lai_die "master port $master_port is in use (another run on this node?): pass --master_port P or set MASTER_PORT"
fi

# Check the config and the data once, for the whole world, before any rank starts.
backend="$("$python" -m pipeline.train --check --print-backend --world "$world" "$config" "$@")" \
    || exit $?

# train.backend=fsdp2: torchrun (through pipeline.train.launcher, which passes exit 75 on) with the
# same ranks, devices, nodes and rendezvous; deepspeed otherwise.
if [[ "$backend" == "fsdp2" ]]; then
    tr_args=(--nproc_per_node "$nranks" --master_addr "$master_addr" --master_port "$master_port")
    if [[ -n "$hostfile" ]]; then
        [[ -n "$node_rank" ]] || lai_die "train.backend=fsdp2: torchrun starts one node at a time; run this on every node with --node_rank K (or use --slurm)"
        tr_args+=(--nnodes "${#hosts[@]}" --node_rank "$node_rank")
    fi
    [[ -z "${devices:-}" ]] || export CUDA_VISIBLE_DEVICES="$devices"
    launcher=("$python" -m pipeline.train.launcher "${tr_args[@]}" -m pipeline.train)
else
    launcher=("$deepspeed" "${ds_args[@]}" --module pipeline.train)
fi

# Stop signals sent to the whole step / process group must reach only the trainers, whose handler
# saves a checkpoint and exits 75; the launcher processes wait for them and pass the 75 on.
# - SIGUSR1 (Slurm's preemption warning, `kill -USR1 -- -PGID`): the launcher processes ignore it;
#   the trainers' own handler replaces the inherited ignore.
# - SIGTERM (a time limit, `kill -TERM -- -PGID`, Slurm's TERM to every process of the step): the
#   deepspeed launcher (and torchrun) installs a TERM handler of its own (terminate the ranks, SIGKILL them 30 s
#   later, exit at once, leaving the master port taken), which would replace an ignore. So TERM is
#   blocked instead, for the launcher and the ranks it starts; each trainer unblocks it once its
#   handler is in place (a TERM that came during start-up is delivered then).
trap '' USR1
ranks_cmd=("$python" -c 'import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
os.execv(sys.argv[1], sys.argv[1:])' "${launcher[@]}" "$config" "$@")
(( max_restarts > 0 )) || exec "${ranks_cmd[@]}"

# --max-restarts N (as torchrun's): a crash starts the ranks again from the latest checkpoint.
# 0 (done), 2 (bad input) and 75 (stopped after a checkpoint) are answers, not crashes; a stop
# signal to this script's group ends the retries too.
stopping=""
trap 'stopping=1' TERM
for (( restart = 0; ; restart++ )); do
    rc=0
    "${ranks_cmd[@]}" || rc=$?
    case "$rc" in 0|2|75) exit "$rc" ;; esac
    if [[ -n "$stopping" ]] || (( restart >= max_restarts )); then
        echo "launch: the ranks failed (exit $rc); no restart left (--max-restarts $max_restarts)" >&2
        exit "$rc"
    fi
    echo "launch: the ranks failed (exit $rc); restart $(( restart + 1 )) of $max_restarts, resuming from the latest checkpoint" >&2
    if [[ "${node_rank:-0}" == "0" ]]; then   # the crashed rendezvous may hold the port a moment
        for (( i = 0; i < 60; i++ )); do lai_port_busy 127.0.0.1 "$master_port" || break; sleep 1; done
    fi
    if (( restart == 0 )); then ranks_cmd+=(run.resume=auto); fi   # once: later tries resume too
done
