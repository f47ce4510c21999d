#!/usr/bin/env bash
# Side-by-side load benchmark: nginx, haproxy, bare Pingora (+mimalloc), our gateway with
# one plain route, and our gateway with the full pipeline (1,000 routes, RS256 JWT with
# its cache, a local rate limit, the access log to a file, metrics), each as a reverse
# proxy in front of the same nginx upstream on loopback; and the full pipeline again with
# tracing exporting OTLP/HTTP to a local receiver (`otlp_sink`, on LOAD_CPU) at
# `sample_ratio: 0` and `1.0` (the spans that reached the receiver are printed at the end).
#
#   bash benches/load/run.sh            # from the repository root
#
# Each proxy runs one worker pinned to PROXY_CPU (default 0); wrk (-t1 -c64, keepalive)
# and the upstream share LOAD_CPU (default 1). Targets are interleaved for ROUNDS rounds
# (default 3) of DURATION seconds (default 10, after a 2 s warm-up); the table shows the
# median round: req/s, p50/p99 latency, CPU microseconds per request of the proxy process
# (utime+stime from /proc/PID/stat), its peak RSS (VmHWM), and ratios to nginx and to
# bare Pingora. Writes results.md, results.tsv and ratios.svg into OUT (default
# benches/load/out) and copies the chart to benches/load/ratios.svg.
#
# Installs wrk, nginx and haproxy from apt when missing and builds the release binaries
# (cargo build --release). Every process it starts is stopped by PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$ROOT/benches/load/out}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/gw-load.XXXXXX)
PIDS=()

# cleanup (stops every PID in PIDS, removes WORK), say, free_port, wait_port, start, cpu_ticks.
. "$ROOT/benches/load/lib.sh"

# --- tools -----------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} from apt"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

say "building release binaries (fat LTO: minutes from cold)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p gateway -p benches \
    --bin gateway --bin bare_pingora --bin load_fixtures --bin otlp_sink >&2)
BIN=$TARGET_DIR/release

# --- the upstream: nginx answering 100 bytes -----------------------------------------
UP_PORT=$(free_port)
BODY=$(printf 'x%.0s' $(seq 1 100))
mkdir -p "$WORK/tmp"
nginx_common="daemon off; master_process off; worker_processes 1; pid PIDFILE; error_log $WORK/ERRLOG warn;
events { worker_connections 4096; }"
cat >"$WORK/upstream.conf" <<EOF
${nginx_common//PIDFILE/$WORK/upstream.pid}
http {
  access_log off;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "$BODY"; } }
}
EOF
sed -i "s|ERRLOG|upstream.err|" "$WORK/upstream.conf"
start "$LOAD_CPU" "$WORK/upstream.log" "$NGINX" -c "$WORK/upstream.conf" -p "$WORK"
wait_port "$UP_PORT"

# --- the proxies -------------------------------------------------------------------------
declare -A PORT PID
NG_PORT=$(free_port)
cat >"$WORK/nginx.conf" <<EOF
${nginx_common//PIDFILE/$WORK/nginx.pid}
http {
  access_log off;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NG_PORT;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
sed -i "s|ERRLOG|nginx.err|" "$WORK/nginx.conf"
PORT[nginx]=$NG_PORT
start "$PROXY_CPU" "$WORK/nginx.log" "$NGINX" -c "$WORK/nginx.conf" -p "$WORK"
PID[nginx]=$STARTED

HA_PORT=$(free_port)
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:$HA_PORT
  default_backend b
backend b
  server s1 127.0.0.1:$UP_PORT
EOF
PORT[haproxy]=$HA_PORT
start "$PROXY_CPU" "$WORK/haproxy.log" "$HAPROXY" -db -f "$WORK/haproxy.cfg"
PID[haproxy]=$STARTED

BARE_PORT=$(free_port)
PORT[pingora]=$BARE_PORT
start "$PROXY_CPU" "$WORK/pingora.log" "$BIN/bare_pingora" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP_PORT" 1
PID[pingora]=$STARTED

PLAIN_PORT=$(free_port); PLAIN_ADMIN=$(free_port); FULL_PORT=$(free_port); FULL_ADMIN=$(free_port)
R0_PORT=$(free_port); R0_ADMIN=$(free_port); R1_PORT=$(free_port); R1_ADMIN=$(free_port)
SINK_PORT=$(free_port)
start "$LOAD_CPU" "$WORK/sink.log" "$BIN/otlp_sink" "127.0.0.1:$SINK_PORT"
wait_port "$SINK_PORT"
TOKEN=$("$BIN/load_fixtures" "$WORK/gw" "127.0.0.1:$UP_PORT" "$PLAIN_PORT" "$PLAIN_ADMIN" "$FULL_PORT" "$FULL_ADMIN" \
    "127.0.0.1:$SINK_PORT" "$R0_PORT" "$R0_ADMIN" "$R1_PORT" "$R1_ADMIN")
PORT[gateway_plain]=$PLAIN_PORT
RUST_LOG=warn start "$PROXY_CPU" "$WORK/plain.log" "$BIN/gateway" run --config "$WORK/gw/plain.yaml"
PID[gateway_plain]=$STARTED
PORT[gateway_full]=$FULL_PORT
RUST_LOG=warn start "$PROXY_CPU" "$WORK/full.log" "$BIN/gateway" run --config "$WORK/gw/full.yaml"
PID[gateway_full]=$STARTED
PORT[full_ratio0]=$R0_PORT
RUST_LOG=warn start "$PROXY_CPU" "$WORK/ratio0.log" "$BIN/gateway" run --config "$WORK/gw/full_ratio0.yaml"
PID[full_ratio0]=$STARTED
PORT[full_ratio1]=$R1_PORT
RUST_LOG=warn start "$PROXY_CPU" "$WORK/ratio1.log" "$BIN/gateway" run --config "$WORK/gw/full_ratio1.yaml"
PID[full_ratio1]=$STARTED

TARGETS=(nginx haproxy pingora gateway_plain gateway_full full_ratio0 full_ratio1)
for t in "${TARGETS[@]}"; do
    wait_port "${PORT[$t]}"
done

# The full pipeline's request: the 501st of 1,000 routes, a bearer token, a Host.
cat >"$WORK/full.lua" <<EOF
wrk.headers["Authorization"] = "Bearer $TOKEN"
wrk.headers["Host"] = "bench.local"
EOF
cat >"$WORK/plain.lua" <<EOF
wrk.headers["Host"] = "bench.local"
EOF
check() {
    local t=$1 path=$2 hdr=()
    case $t in gateway_full | full_ratio*) hdr=(-H "Authorization: Bearer $TOKEN") ;; esac
    local got
    got=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.local' "${hdr[@]}" "http://127.0.0.1:${PORT[$t]}$path" || true)
    if [ "$got" != 200 ]; then
        say "$t answered $got instead of 200"
        exit 1
    fi
}
for t in "${TARGETS[@]}"; do
    check "$t" /bench
done

hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
to_us() { # wrk latency text (e.g. 812.00us, 1.20ms, 1.01s) -> microseconds
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /s$/) m = 1000000; else m = 1; printf "%.0f", n * m }'
}
HZ=$(getconf CLK_TCK)

: >"$WORK/rounds.tsv"
say "measuring: ${#TARGETS[@]} targets x $ROUNDS rounds x ${DURATION}s"
for round in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        script=$WORK/plain.lua
        case $t in gateway_full | full_ratio*) script=$WORK/full.lua ;; esac
        url="http://127.0.0.1:${PORT[$t]}/bench"
        timeout 10 taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d2s -s "$script" "$url" >/dev/null
        c0=$(cpu_ticks "${PID[$t]}")
        out=$(timeout $((DURATION + 15)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$script" "$url")
        c1=$(cpu_ticks "${PID[$t]}")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
        p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
        [ -n "$errors" ] && say "$t round $round: $errors"
        cpu_us=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", (b - a) * 1000000 / hz / n }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$rps" "$p50" "$p99" "$cpu_us" >>"$WORK/rounds.tsv"
        say "round $round $t: $rps req/s, p50 ${p50}us, p99 ${p99}us, ${cpu_us}us CPU/request"
    done
done
for t in "${TARGETS[@]}"; do
    printf '%s\t%s\n' "$t" "$(hwm_kib "${PID[$t]}")" >>"$WORK/rss.tsv"
done

mkdir -p "$OUT"
cp "$WORK/rounds.tsv" "$WORK/rss.tsv" "$OUT/"
python3 "$ROOT/benches/load/report.py" "$OUT" "$ROUNDS" "$DURATION" "$CONNECTIONS"
cp "$OUT/ratios.svg" "$ROOT/benches/load/ratios.svg"
# Keep the full pipeline's access log size as a sign it really logged.
say "full pipeline access log: $(wc -l <"$WORK/gw/access.log") lines"
# Tracing at ratio 1 measured nothing if its spans did not arrive (or were dropped).
say "spans at the OTLP receiver: $(curl -s "http://127.0.0.1:$SINK_PORT/count"), dropped by the gateway at ratio 1: $(curl -s "http://127.0.0.1:$R1_ADMIN/metrics" | awk '/^gateway_trace_spans_dropped_total/ {n += $2} END {print n + 0}')"
cat "$OUT/results.md"
