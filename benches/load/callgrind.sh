#!/usr/bin/env bash
# Instructions per proxied request (valgrind --tool=callgrind), which do not depend on
# what else runs on the machine: bare Pingora (+mimalloc), the gateway's plain route and
# its full pipeline (the configs of run.sh, from load_fixtures), behind the same nginx
# upstream. Counters are zeroed after a warm-up and dumped after REQUEST_SECONDS of
# `wrk -t1 -c4`, so the count covers every thread of the process (the access-log writer
# included) for exactly the requests wrk reports.
#
# Tracing overhead: the full pipeline again with `tracing:` exporting OTLP/HTTP to a local
# receiver (`otlp_sink`, not under valgrind), at `sample_ratio: 0` (ids and the sampling
# decision only) and `1.0` (every span recorded and exported; the export thread is in
# the count). After each traced run the script waits for the last batch and checks what
# arrived: spans per request at the sink and the gateway's dropped-span counter; a ratio-1
# run that exported nothing (or dropped spans) fails the script.
#
#   bash benches/load/callgrind.sh        # needs valgrind, wrk, nginx, curl; release binaries
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
R0_PORT=$(free_port); R0_ADMIN=$(free_port); R1_PORT=$(free_port); R1_ADMIN=$(free_port)
SINK_PORT=$(free_port)
"$BIN/otlp_sink" "127.0.0.1:$SINK_PORT" >"$WORK/sink.out" 2>&1 &
PIDS+=($!)
wait_port "$SINK_PORT"
TOKEN=$("$BIN/load_fixtures" "$WORK/gw" "127.0.0.1:$UP_PORT" "$PLAIN_PORT" "$PLAIN_ADMIN" "$FULL_PORT" "$FULL_ADMIN" \
    "127.0.0.1:$SINK_PORT" "$R0_PORT" "$R0_ADMIN" "$R1_PORT" "$R1_ADMIN")
printf 'wrk.headers["Host"] = "bench.local"\n' >"$WORK/plain.lua"
printf 'wrk.headers["Host"] = "bench.local"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$TOKEN" >"$WORK/full.lua"

sink_spans() { curl -s "http://127.0.0.1:$SINK_PORT/count" | sed -n 's/^spans=\([0-9]*\).*/\1/p'; }
declare -A IPR
# Spans the sink got since `measure` started and the gateway's dropped spans, once the
# last batch is in (the count stops growing for 3 s: the batch interval is 1 s).
check_spans() { # name admin_port spans_before requests expect(none|all)
    local name=$1 admin=$2 before=$3 reqs=$4 expect=$5 now prev=-1 same=0 i dropped
    for i in $(seq 1 300); do
        now=$(sink_spans)
        if [ "$now" = "$prev" ]; then same=$((same + 1)); else same=0; fi
        [ "$same" -ge 6 ] && break
        prev=$now
        sleep 0.5
    done
    local metrics
    metrics=$(curl -sf "http://127.0.0.1:$admin/metrics") || { say "$name: no /metrics on $admin"; exit 1; }
    grep -q '^gateway_trace_spans_exported_total' <<<"$metrics" || { say "$name: no span counters in /metrics"; exit 1; }
    dropped=$(awk '/^gateway_trace_spans_dropped_total/ {n += $2} END {print n + 0}' <<<"$metrics")
    awk -v n="$name" -v s=$((now - before)) -v r="$reqs" -v d="$dropped" \
        'BEGIN { printf "%-16s %d spans exported to the sink for %d requests (%.2f per request), %d dropped\n", n, s, r, s / r, d }'
    if [ "$expect" = all ] && { [ $((now - before)) -lt "$reqs" ] || [ "$dropped" -ne 0 ]; }; then
        say "$name: spans missing at the sink or dropped: not a measurement"; exit 1
    fi
    if [ "$expect" = none ] && [ $((now - before)) -ne 0 ]; then
        say "$name: spans exported at sample_ratio 0"; exit 1
    fi
}

measure() { # name port script command...  (TRACE="admin_port none|all" checks the spans)
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
    local spans0="" warm reqs
    [ -n "${TRACE:-}" ] && spans0=$(sink_spans)
    warm=$(wrk -t1 -c4 -d5s -s "$script" "http://127.0.0.1:$port/bench" | awk '/requests in/ {print $1}')
    callgrind_control -z "$pid" >/dev/null 2>&1
    reqs=$(wrk -t1 -c4 -d"${SECONDS_PER}s" -s "$script" "http://127.0.0.1:$port/bench" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    local total="" i
    for i in $(seq 1 600); do
        total=$(cat "$out"/cg.out.* 2>/dev/null | awk '/^(totals|summary):/ {print $2; exit}' || true)
        [ -n "$total" ] && break
        sleep 0.1
    done
    # Spans of the warm-up and the measured requests (the sink sees both).
    # shellcheck disable=SC2086
    [ -n "${TRACE:-}" ] && check_spans "$name" ${TRACE%% *} "$spans0" $((warm + reqs)) ${TRACE##* }
    # SIGKILL: the numbers are in; a graceful Pingora shutdown under valgrind takes minutes.
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    IPR[$name]=$(awk -v t="$total" -v r="$reqs" 'BEGIN { printf "%.0f", t / r }')
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
want full_ratio0 && TRACE="$R0_ADMIN none" measure full_ratio0 "$R0_PORT" "$WORK/full.lua" "$BIN/gateway" run --config "$WORK/gw/full_ratio0.yaml"
want full_ratio1 && TRACE="$R1_ADMIN all" measure full_ratio1 "$R1_PORT" "$WORK/full.lua" "$BIN/gateway" run --config "$WORK/gw/full_ratio1.yaml"
if [ -n "${IPR[gateway_full]:-}" ]; then
    for t in full_ratio0 full_ratio1; do
        [ -n "${IPR[$t]:-}" ] && awk -v n="$t" -v a="${IPR[$t]}" -v b="${IPR[gateway_full]}" \
            'BEGIN { printf "%-16s %+.1f%% instructions/request against gateway_full\n", n, (a / b - 1) * 100 }'
    done
fi
exit 0
