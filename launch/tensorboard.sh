#!/usr/bin/env bash
# Serve TensorBoard for one run or for all runs of an experiment folder (side by side).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<USAGE
Usage: launch/tensorboard.sh [--port PORT] [--host HOST] PATH

Serve the TensorBoard logs under PATH:
  a run directory (RUN/tb is served), or
  an experiment folder holding several runs (every RUN/tb below it is a run, compared side by side).

Options:
  --port PORT   port to listen on (default: 6006, or \$TB_PORT)
  --host HOST   address to bind (default: 127.0.0.1 -- loopback only; reach it through an SSH tunnel:
                  ssh -N -L PORT:127.0.0.1:PORT you@this-machine   then open http://localhost:PORT)
  -h, --help    this text
USAGE
}

port="${TB_PORT:-6006}"
host="127.0.0.1"
path=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --port) [[ $# -ge 2 ]] || lai_die "--port needs a value"; port="$2"; shift 2 ;;
        --host) [[ $# -ge 2 ]] || lai_die "--host needs a value"; host="$2"; shift 2 ;;
        -*) lai_die "unknown option '$1' (see --help)" ;;
        *) [[ -z "$path" ]] || lai_die "one PATH only (got '$path' and '$1')"; path="$1"; shift ;;
    esac
done

[[ -n "$path" ]] || { usage >&2; lai_die "missing PATH (a run directory or an experiment folder)"; }
[[ -d "$path" ]] || lai_die "$path: no such directory"
if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    lai_die "--port: '$port' is not a TCP port"
fi

logdir="$path"
[[ -d "$path/tb" ]] && logdir="$path/tb"
if [[ -z "$(find "$logdir" -name 'events.out.tfevents.*' -print -quit)" ]]; then
    echo "warning: no TensorBoard event files under $logdir yet; serving anyway (they appear as the run writes them)" >&2
fi
if lai_port_busy "$host" "$port"; then
    lai_die "port $port on $host is in use (pick another: --port $((port + 1)); see who holds it: ss -ltnp 'sport = :$port')"
fi

tensorboard="$(lai_tool tensorboard)"
echo "TensorBoard: $logdir -> http://$host:$port/"
if [[ "$host" == "127.0.0.1" || "$host" == "localhost" ]]; then
    echo "  from your laptop: ssh -N -L $port:127.0.0.1:$port $(id -un)@$(hostname -f 2>/dev/null || hostname)  then open http://localhost:$port/"
fi
# --load_fast=false: the fast loader (TensorBoard 2.21) drops the tags' descriptions
exec "$tensorboard" --logdir "$logdir" --host "$host" --port "$port" --load_fast=false
