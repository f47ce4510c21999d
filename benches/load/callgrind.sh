#!/usr/bin/env bash
# Instructions per proxied request (valgrind --tool=callgrind), which do not depend on
# what else runs on the machine: bare Pingora (+mimalloc), the gateway's plain route and
# its full pipeline (the configs of run.sh, from load_fixtures), behind the same nginx
# upstream. Counters are zeroed after a warm-up and dumped after REQUEST_SECONDS of
# `wrk -t1 -c4`, so the count covers every thread of the process (the access-log writer
# included) for exactly the requests wrk reports.
#
#   bash benches/load/callgrind.sh        # needs valgrind, wrk, nginx; release binaries
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
SECONDS_PER=${REQUEST_SECONDS:-8}
WORK=$(mktemp -d /tmp/gw-callgrind.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then say "dumps kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
say() { printf '%s\n' "$*" >&2; }
for tool in valgrind callgrind_control wrk; do
    command -v "$tool" >/dev/null || { say "$tool is missing (apt-get install valgrind wrk)"; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() {
    local i
    for i in $(seq 1 1200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    say "nothing listening on $1"; return 1
}

UP_PORT=$(free_port)
mkdir -p "$WORK/tmp"
cat >"$WORK/upstream.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $WORK/up.pid; error_log $WORK/up.err warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "$(printf 'x%.0s' $(seq 1 100))"; } }
}
EOF
"$NGINX" -c "$WORK/upstream.conf" -p "$WORK" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT"

PLAIN_PORT=$(free_port); PLAIN_ADMIN=$(free_port); FULL_PORT=$(free_port); FULL_ADMIN=$(free_port)
BARE_PORT=$(free_port)
TOKEN=$("$BIN/load_fixtures" "$WORK/gw" "127.0.0.1:$UP_PORT" "$PLAIN_PORT" "$PLAIN_ADMIN" "$FULL_PORT" "$FULL_ADMIN")
printf 'wrk.headers["Host"] = "bench.local"\n' >"$WORK/plain.lua"
printf 'wrk.headers["Host"] = "bench.local"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$TOKEN" >"$WORK/full.lua"

measure() { # name port script command...
    local name=$1 port=$2 script=$3
    shift 3
    local out=$WORK/$name
    mkdir -p "$out"
    RUST_LOG=warn valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out/cg.out" "$@" \
        >"$out/stdout" 2>"$out/stderr" &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    say "$name: up under callgrind, measuring"
    wrk -t1 -c4 -d5s -s "$script" "http://127.0.0.1:$port/bench" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    local reqs
    reqs=$(wrk -t1 -c4 -d"${SECONDS_PER}s" -s "$script" "http://127.0.0.1:$port/bench" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    local total="" i
    for i in $(seq 1 600); do
        total=$(cat "$out"/cg.out.* 2>/dev/null | awk '/^(totals|summary):/ {print $2; exit}' || true)
        [ -n "$total" ] && break
        sleep 0.1
    done
    # SIGKILL: the numbers are in; a graceful Pingora shutdown under valgrind takes minutes.
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    awk -v n="$name" -v t="$total" -v r="$reqs" 'BEGIN { printf "%-16s %9.0f instructions/request (%d requests)\n", n, t / r, r }'
}

# ONLY=name measures one target; KEEP=1 keeps the dumps (callgrind_annotate WORK/name/cg.out.*).
want() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }
want pingora && measure pingora "$BARE_PORT" "$WORK/plain.lua" "$BIN/bare_pingora" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP_PORT" 1
want gateway_plain && measure gateway_plain "$PLAIN_PORT" "$WORK/plain.lua" "$BIN/gateway" run --config "$WORK/gw/plain.yaml"
# Not in the default set: the plain route with Pingora's work-stealing runtime, to see
# what `server.work_stealing: false` buys (ONLY=gateway_plain_ws).
if [ "${ONLY:-}" = gateway_plain_ws ]; then
    sed 's/server: {threads: 1}/server: {threads: 1, work_stealing: true}/' "$WORK/gw/plain.yaml" >"$WORK/gw/plain_ws.yaml"
    measure gateway_plain_ws "$PLAIN_PORT" "$WORK/plain.lua" "$BIN/gateway" run --config "$WORK/gw/plain_ws.yaml"
fi
want gateway_full && measure gateway_full "$FULL_PORT" "$WORK/full.lua" "$BIN/gateway" run --config "$WORK/gw/full.yaml"
exit 0
