# Shared by run.sh and tls.sh (sourced after ROOT, WORK and PIDS are set): stop every
# process started by PID on exit, and the small helpers both scripts use.

cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '%s\n' "$*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
    local port=$1 i
    for i in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    say "nothing listening on $port"
    return 1
}

# Start a process pinned to a CPU in the background; its PID is in $STARTED.
start() {
    local cpu=$1 log=$2
    shift 2
    taskset -c "$cpu" "$@" >"$log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
