# Shared helpers for the launch/ scripts (sourced, not run). Defines:
#   LAI_ROOT            the repository checkout (parent of launch/), unless already set
#   lai_die MSG...      print "error: <script>: MSG" to stderr and exit 2
#   lai_tool NAME       path of an executable: $PATH first, then $LAI_ROOT/.venv/bin
#   lai_port_busy HOST PORT   true when something accepts TCP connections on HOST:PORT
# shellcheck shell=bash

LAI_ROOT="${LAI_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export LAI_ROOT

lai_die() {
    echo "error: $(basename "$0"): $*" >&2
    exit 2
}

lai_tool() {
    local name="$1"
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    elif [[ -x "$LAI_ROOT/.venv/bin/$name" ]]; then
        echo "$LAI_ROOT/.venv/bin/$name"
    else
        lai_die "'$name' not found on PATH or in $LAI_ROOT/.venv/bin (activate the project's virtualenv, or run 'make setup')"
    fi
}

lai_port_busy() {
    local host="$1" port="$2"
    [[ "$host" == "0.0.0.0" || "$host" == "::" ]] && host=127.0.0.1
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}
