#!/usr/bin/env bash
# Side-by-side TLS and HTTP/2 benchmark: nginx and our gateway, each terminating TLS 1.3
# with the same ECDSA P-256 certificate (generated with openssl into a temp dir), each a
# reverse proxy in front of the same nginx upstream on loopback (plain HTTP/1.1, keepalive).
#
#   bash benches/load/tls.sh            # from the repository root
#   ROUNDS=2 DURATION=5 LOADS="https hs full h2" CONNECTIONS=64 HS_CONNECTIONS=16 \
#   H2_CONNECTIONS=16 H2_STREAMS=10 PROXY_CPU=0 LOAD_CPU=1   (the defaults; SKIP_BUILD=1 skips cargo)
#
# Three loads per target, interleaved for ROUNDS rounds (default 2) of DURATION seconds
# (default 5, after a 1 s warm-up):
#   https  wrk -t1 -c64 over https, keepalive: req/s and CPU µs/request;
#   hs     wrk -t1 -c16 over https with "Connection: close": a new connection and TLS
#          handshake per request, so req/s = handshakes/s; wrk keeps its TLS session
#          across reconnects (SSL_clear), so a server that issues tickets resumes it;
#   full   openssl s_time -new: one client, sequential, a full handshake (no resumption)
#          per connection and no request: CPU µs per full handshake;
#   h2     h2load -c16 -m10 over TLS (ALPN h2): req/s and CPU µs/request.
# Each proxy runs one worker pinned to PROXY_CPU (default 0); the load generator and the
# upstream share LOAD_CPU (default 1). CPU per request is the proxy process's utime+stime
# delta (/proc/PID/stat) over the measured run divided by the requests completed. Writes
# tls.md and tls_rounds.tsv into OUT (default benches/load/out); the table is the median
# round with ratios to nginx.
#
# Installs wrk, nginx and nghttp2-client (h2load) from apt when missing and builds the
# release gateway (cargo build --release). Every process it starts is stopped by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-64}
HS_CONNECTIONS=${HS_CONNECTIONS:-16}
H2_CONNECTIONS=${H2_CONNECTIONS:-16}
H2_STREAMS=${H2_STREAMS:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$ROOT/benches/load/out}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/gw-tls.XXXXXX)
PIDS=()

# cleanup (stops every PID in PIDS, removes WORK), say, free_port, wait_port, start, cpu_ticks.
. "$ROOT/benches/load/lib.sh"

# --- tools -----------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} from apt"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${SKIP_BUILD:-}" ]; then
    say "building the release gateway (fat LTO: minutes from cold)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p gateway --bin gateway >&2)
fi
BIN=$TARGET_DIR/release

# --- the certificate: ECDSA P-256, SAN bench.local ----------------------------------------
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/key.pem" 2>/dev/null
openssl req -x509 -new -key "$WORK/key.pem" -out "$WORK/cert.pem" -days 2 \
    -subj /CN=bench.local -addext subjectAltName=DNS:bench.local 2>/dev/null

# --- the upstream: nginx answering 100 bytes -----------------------------------------
UP_PORT=$(free_port)
BODY=$(printf 'x%.0s' $(seq 1 100))
mkdir -p "$WORK/tmp"
nginx_common="daemon off; master_process off; worker_processes 1; pid PIDFILE; error_log $WORK/ERRLOG warn;
events { worker_connections 4096; }"
http_common="access_log off;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  keepalive_requests 1000000;"
cat >"$WORK/upstream.conf" <<EOF
${nginx_common//PIDFILE/$WORK/upstream.pid}
http {
  $http_common
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "$BODY"; } }
}
EOF
sed -i "s|ERRLOG|upstream.err|" "$WORK/upstream.conf"
start "$LOAD_CPU" "$WORK/upstream.log" "$NGINX" -c "$WORK/upstream.conf" -p "$WORK"
wait_port "$UP_PORT"

# --- the proxies -------------------------------------------------------------------------
# nginx: TLS 1.3 only, h2 by ALPN, no session cache or tickets configured (nginx's
# defaults: tickets on); http2_max_requests raised so h2load's connections are not
# recycled mid-run (the default 1000 would add handshakes to the h2 numbers).
declare -A PORT PID
NG_PORT=$(free_port)
cat >"$WORK/nginx.conf" <<EOF
${nginx_common//PIDFILE/$WORK/nginx.pid}
http {
  $http_common
  http2_max_requests 1000000;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NG_PORT ssl http2;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.3;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
sed -i "s|ERRLOG|nginx.err|" "$WORK/nginx.conf"
PORT[nginx]=$NG_PORT
start "$PROXY_CPU" "$WORK/nginx.log" "$NGINX" -c "$WORK/nginx.conf" -p "$WORK"
PID[nginx]=$STARTED

GW_PORT=$(free_port)
GW_ADMIN=$(free_port)
cat >"$WORK/gateway.yaml" <<EOF
server: {threads: 1}
listeners:
  - name: https
    address: '127.0.0.1:$GW_PORT'
    tls:
      certificates: [{cert_file: '$WORK/cert.pem', key_file: '$WORK/key.pem'}]
      min_version: "1.3"
admin: {address: '127.0.0.1:$GW_ADMIN'}
upstreams: {o: {endpoints: [{address: '127.0.0.1:$UP_PORT'}]}}
routes:
  - {id: plain, match: {path: {prefix: /}}, upstream: o}
access_log: off
EOF
PORT[gateway]=$GW_PORT
RUST_LOG=warn start "$PROXY_CPU" "$WORK/gateway.log" "$BIN/gateway" run --config "$WORK/gateway.yaml"
PID[gateway]=$STARTED

TARGETS=(nginx gateway)
for t in "${TARGETS[@]}"; do
    wait_port "${PORT[$t]}"
done

# Every target answers 200 over TLS 1.3 with h2 and with HTTP/1.1.
for t in "${TARGETS[@]}"; do
    for v in --http2 --http1.1; do
        got=$(curl -sk --tlsv1.3 "$v" -o /dev/null -w '%{http_code} %{http_version}' \
            --resolve "bench.local:${PORT[$t]}:127.0.0.1" "https://bench.local:${PORT[$t]}/bench" || true)
        case "$v:$got" in
            --http2:"200 2" | --http1.1:"200 1.1") ;;
            *) say "$t ($v) answered '$got'"; exit 1 ;;
        esac
    done
done
say "negotiated (gateway): $(openssl s_client -connect "127.0.0.1:$GW_PORT" -servername bench.local </dev/null 2>/dev/null |
    awk '/^New,|Server Temp Key|Peer signature type/' | tr '\n' ' ')"
say "negotiated (nginx):   $(openssl s_client -connect "127.0.0.1:$NG_PORT" -servername bench.local </dev/null 2>/dev/null |
    awk '/^New,|Server Temp Key|Peer signature type/' | tr '\n' ' ')"

HZ=$(getconf CLK_TCK)

# run LOAD TARGET SECONDS -> "requests req/s errors" on stdout. The URL is an IP address,
# so wrk and h2load send no SNI and both proxies serve their only certificate.
run() {
    local load=$1 t=$2 secs=$3 url="https://127.0.0.1:${PORT[$2]}/bench" out
    case "$load" in
        https)
            out=$(timeout $((secs + 15)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" "$url")
            awk '/requests in/ {n = $1} /^Requests\/sec/ {r = $2} /Non-2xx|Socket errors/ {e = e $0 " "}
                END {print n, r, (e == "" ? "-" : e)}' <<<"$out" ;;
        hs)
            out=$(timeout $((secs + 15)) taskset -c "$LOAD_CPU" wrk -t1 -c"$HS_CONNECTIONS" -d"${secs}s" -H "Connection: close" "$url")
            awk '/requests in/ {n = $1} /^Requests\/sec/ {r = $2} /Non-2xx|Socket errors/ {e = e $0 " "}
                END {print n, r, (e == "" ? "-" : e)}' <<<"$out" ;;
        full)
            out=$(timeout $((secs + 15)) taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:${PORT[$t]}" -new -time "$secs" 2>&1)
            awk '/real seconds/ {printf "%s %.1f -\n", $1, $1 / $4} END {if (NR == 0) print "0 0 no-output"}' <<<"$out" ;;
        h2)
            out=$(timeout $((secs + 15)) taskset -c "$LOAD_CPU" h2load -c"$H2_CONNECTIONS" -m"$H2_STREAMS" -D "$secs" "$url")
            awk '/^finished in/ {r = $4} /^requests:/ {n = $8; bad = $10 + $12 + $14}
                /^status codes:/ {if ($3 + 0 != n) e = "non-2xx " n - $3}
                END {print n, r, (e == "" && bad == 0 ? "-" : e " failed " bad)}' <<<"$out" ;;
    esac
}

: >"$WORK/rounds.tsv"
read -r -a LOADS <<<"${LOADS:-https hs full h2}"
say "measuring: ${#TARGETS[@]} targets x ${#LOADS[@]} loads x $ROUNDS rounds x ${DURATION}s"
for round in $(seq 1 "$ROUNDS"); do
    for load in "${LOADS[@]}"; do
        for t in "${TARGETS[@]}"; do
            run "$load" "$t" 1 >/dev/null
            c0=$(cpu_ticks "${PID[$t]}")
            read -r reqs rps errors < <(run "$load" "$t" "$DURATION")
            c1=$(cpu_ticks "${PID[$t]}")
            [ "$errors" != - ] && say "$t $load round $round: $errors"
            cpu_us=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", (b - a) * 1000000 / hz / n }')
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$load" "$t" "$rps" "$cpu_us" >>"$WORK/rounds.tsv"
            say "round $round $load $t: $rps req/s, ${cpu_us}us CPU/request"
        done
    done
done

mkdir -p "$OUT"
cp "$WORK/rounds.tsv" "$OUT/tls_rounds.tsv"
python3 - "$OUT" "$ROUNDS" "$DURATION" <<'EOF'
import os, statistics, subprocess, sys
out, rounds, duration = sys.argv[1:4]
rows = {}
for line in open(os.path.join(out, "tls_rounds.tsv")):
    _, load, t, rps, cpu = line.rstrip("\n").split("\t")
    rows.setdefault((load, t), []).append((float(rps), float(cpu)))
model = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
              if l.startswith("Model name")), "?")
names = {"https": "HTTPS keepalive (wrk -c64), req/s", "hs": "TLS handshakes/s (wrk -c16, Connection: close)",
         "full": "full handshakes/s (openssl s_time -new, 1 client)",
         "h2": "h2 over TLS (h2load -c16 -m10), req/s"}
lines = [f"{rounds} interleaved rounds of {duration} s, medians; {os.cpu_count()} x {model}; one worker per proxy pinned to one core.", "",
         "| load | nginx | gateway | gateway x nginx | nginx CPU µs/req | gateway CPU µs/req | CPU x nginx |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for load in names:
    if (load, "nginx") not in rows or (load, "gateway") not in rows:
        continue
    n = [statistics.median(r[i] for r in rows[(load, "nginx")]) for i in (0, 1)]
    g = [statistics.median(r[i] for r in rows[(load, "gateway")]) for i in (0, 1)]
    lines.append(f"| {names[load]} | {n[0]:,.0f} | {g[0]:,.0f} | {g[0] / n[0]:.2f} | {n[1]:.1f} | {g[1]:.1f} | {g[1] / n[1]:.2f} |")
lines += ["", "Every round (req/s / CPU µs per request):", ""]
for (load, t), rs in rows.items():
    lines.append(f"- {load} {t}: " + ", ".join(f"{r[0]:,.0f} / {r[1]:.1f}" for r in rs))
open(os.path.join(out, "tls.md"), "w").write("\n".join(lines) + "\n")
EOF
cat "$OUT/tls.md"
