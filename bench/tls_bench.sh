#!/usr/bin/env bash
# TLS on the data plane (issue #26): netd against HAProxy 2.6 (Debian's,
# OpenSSL) and nginx, side by side in one run, the same certificates (an
# ECDSA P-256 and an RSA-2048 one, each signed by a CA of its kind, made
# with openssl in the run's temporary directory), the same clients, the
# same plain upstream, loopback only:
#   1. TLS handshakes/s, a new connection per request: bench/tls_load.rs
#      handshake (TLS 1.3, session resumption off on the client; HAProxy
#      with no-tls-tickets) through netd's TLS-terminating proxy and
#      HAProxy's (mode tcp, bind ... ssl crt) to the same plain netd TCP
#      echo, for each certificate; and each proxy's CPU time per
#      handshake (utime + stime from /proc/PID/stat over the run)
#   2. bulk through each TLS-terminating proxy (tls_load bulk: streams
#      echoed back through the TLS connection), MB/s and CPU per MB; and
#      netd's plaintext proxy against the build before TLS (iperf3 one
#      stream; NETD_BEFORE=path to that netd binary, else skipped)
#   3. HTTPS requests/s, keep-alive: wrk https:// against netd's http
#      kind (--tls-cert) and nginx serving the same JSON body as a static
#      file with the same certificate
#   4. resident memory per idle TLS connection (tls_load idle, IDLE open)
#      in netd's proxy and HAProxy
# Rounds alternate the order of the two under test; each figure is the
# median over the rounds. Prints one table with the ratios.
#
# If this build's proxy does not serve TLS yet, part 1, 2 and 4 measure a
# TLS TCP echo in netd (netctl start tcp-echo --tls-cert ...) instead, and
# the table says so: a different comparison (netd then has no upstream hop,
# HAProxy has one). If the http kind does not serve TLS, part 3 is skipped.
#
#   bench/tls_bench.sh      # SECS=5 CONC=32 BULK_CONNS=2 ROUNDS=3 IDLE=1000 KEYS="ecdsa rsa"
#   NETD_BEFORE=/path/to/netd-before-tls bench/tls_bench.sh
. "$(dirname "$0")/lib.sh"
SECS=${SECS:-5}
CONC=${CONC:-32}
BULK_CONNS=${BULK_CONNS:-2}
ROUNDS=${ROUNDS:-3}
IDLE=${IDLE:-1000}
KEYS=${KEYS:-ecdsa rsa}

need haproxy nginx wrk iperf3 openssl curl
if [ -n "${NETD_BEFORE:-}" ]; then cp "$NETD_BEFORE" "$work/netd-before"; fi
build_release --bin netd --bin netctl --example tls_load
LOAD=$EXAMPLES/tls_load
ulimit -n "$(ulimit -Hn)"  # IDLE proxied connections need 2 x IDLE fds in a proxy

chmod 755 "$work"  # nginx workers (www-data) read the static file
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start" >&2

# The certificates: one CA and one server certificate (localhost,
# 127.0.0.1) per key kind; the keys closed to others, as netd requires.
pki() { # kind genpkey-args...
  local k=$1
  shift
  openssl genpkey "$@" -out "$work/$k-ca-key.pem" 2>/dev/null
  openssl req -x509 -new -key "$work/$k-ca-key.pem" -subj "/CN=tls_bench $k CA" -days 2 -out "$work/$k-ca.pem"
  openssl genpkey "$@" -out "$work/$k-key.pem" 2>/dev/null
  openssl req -new -key "$work/$k-key.pem" -subj /CN=localhost -out "$work/$k.csr"
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$work/$k.ext"
  openssl x509 -req -in "$work/$k.csr" -CA "$work/$k-ca.pem" -CAkey "$work/$k-ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$work/$k.ext" -out "$work/$k.pem" 2>/dev/null
  cat "$work/$k.pem" "$work/$k-key.pem" > "$work/$k-haproxy.pem"  # HAProxy's crt: both in one
  chmod 600 "$work/$k-key.pem" "$work/$k-haproxy.pem"
}
pki ecdsa -algorithm EC -pkeyopt ec_paramgen_curve:P-256
pki rsa -algorithm RSA -pkeyopt rsa_keygen_bits:2048

# The plain upstream: a netd TCP echo in a process of its own, and iperf3.
quiet_config "$work/quiet.toml"
start_netd up "$work/quiet.toml"
ECHO=$(free_port)
ctl_at up start tcp-echo up --listen "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
IPERF=$(free_port)
iperf3 -s -p "$IPERF" -D --pidfile "$work/iperf.pid"; sleep 0.3; pids+=("$(cat "$work/iperf.pid")")

# netd under test: a TLS-terminating proxy per certificate, and a plain one.
start_netd px "$work/quiet.toml"; NETD_PID=$netd_pid
declare -A NETD_TLS HAP_TLS
for k in $KEYS; do
  NETD_TLS[$k]=$(free_port)
  ctl_at px start proxy "tls-$k" --listen "127.0.0.1:${NETD_TLS[$k]}" --upstream "127.0.0.1:$ECHO" \
    --tls-cert "$work/$k.pem" --tls-key "$work/$k-key.pem" --max-connections 100000 >/dev/null
done
NETD_PLAIN=$(free_port)
ctl_at px start proxy plain --listen "127.0.0.1:$NETD_PLAIN" --upstream "127.0.0.1:$IPERF" >/dev/null

# Does this build's proxy terminate TLS? One second of handshakes says.
serves_tls() { # port ca
  local out
  out=$("$LOAD" handshake --addr "127.0.0.1:$1" --ca "$2" --concurrency 1 --duration 1 2>/dev/null) || return 1
  python3 -c 'import json, sys; r = json.loads(sys.argv[1]); sys.exit(0 if r["handshakes"] > 0 and r["errors"] == 0 else 1)' "$out"
}
first_key=${KEYS%% *}
NETD_WHAT=proxy
if ! serves_tls "${NETD_TLS[$first_key]}" "$work/$first_key-ca.pem"; then
  NETD_WHAT=tcp-echo
  echo "netd's proxy does not serve TLS in this build: measuring netd's TLS tcp-echo instead" >&2
  for k in $KEYS; do
    ctl_at px stop "tls-$k" >/dev/null
    NETD_TLS[$k]=$(free_port)
    ctl_at px start tcp-echo "tls-$k" --listen "127.0.0.1:${NETD_TLS[$k]}" \
      --tls-cert "$work/$k.pem" --tls-key "$work/$k-key.pem" --max-connections 100000 >/dev/null
  done
  serves_tls "${NETD_TLS[$first_key]}" "$work/$first_key-ca.pem" || bench_gave_up "netd's TLS tcp-echo does not handshake"
fi

# HAProxy: the same certificates, TLS 1.3, no tickets, in front of the same echo.
{
  printf 'global\n  maxconn %s\n  nbthread %s\n' $((IDLE * 2 + 1000)) "$(nproc)"
  printf '  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets\n'
  printf 'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\n'
  printf 'backend be_echo\n  server s1 127.0.0.1:%s\n' "$ECHO"
  for k in $KEYS; do
    HAP_TLS[$k]=$(free_port)
    printf 'frontend fe_%s\n  bind 127.0.0.1:%s ssl crt %s\n  default_backend be_echo\n' \
      "$k" "${HAP_TLS[$k]}" "$work/$k-haproxy.pem"
  done
} > "$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" & HAP_PID=$!; pids+=($HAP_PID)
wait_port "${HAP_TLS[$first_key]}"
serves_tls "${HAP_TLS[$first_key]}" "$work/$first_key-ca.pem" || bench_gave_up "HAProxy does not handshake"

# A tls_load run against a server process: its JSON line with the
# process's CPU time per handshake (µs) or per MB echoed (ms) added.
with_cpu() { # pid mode port ca args...
  local pid=$1 mode=$2 port=$3 ca=$4 before out after
  shift 4
  before=$(cpu_ticks "$pid")
  out=$("$LOAD" "$mode" --addr "127.0.0.1:$port" --ca "$ca" --duration "$SECS" "$@")
  after=$(cpu_ticks "$pid")
  python3 -c "
import json, sys
r = json.loads(sys.argv[1])
cpu_s = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
r['cpu_pct'] = 100 * cpu_s / r['secs']
if 'handshakes' in r: r['cpu_us'] = cpu_s * 1e6 / max(r['handshakes'], 1)
else: r['cpu_ms_per_mb'] = cpu_s * 1e3 / max(r['bytes'] / 1e6, 1e-9)
print(json.dumps(r))" "$out" "$before" "$after" "$HZ"
}
median_json() { python3 -c '
import json, statistics, sys
runs = [json.loads(a) for a in sys.argv[1:]]
out = {k: statistics.median(r[k] for r in runs) if isinstance(runs[0][k], (int, float)) else runs[0][k] for k in runs[0]}
out["errors"] = sum(r["errors"] for r in runs)  # errors: all rounds
print(json.dumps(out))' "$@"; }

# One measurement of both, ROUNDS times, order alternating; medians.
# Sets A_OUT (HAProxy or the reference) and B_OUT (netd), each with
# "ratio_KEY" added to B_OUT for each KEY given: the median of the rounds'
# B/A ratios, which the machine's drift from round to round moves less
# than the ratio of the two medians.
ab_rounds() { # label 'command A' 'command B' KEY...
  local a=() b=() round label=$1 ca=$2 cb=$3
  shift 3
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then a+=("$(eval "$ca")"); b+=("$(eval "$cb")")
    else b+=("$(eval "$cb")"); a+=("$(eval "$ca")"); fi
    echo "round $round $label: ${a[-1]} | ${b[-1]}" >&2
  done
  A_OUT=$(median_json "${a[@]}"); B_OUT=$(median_json "${b[@]}")
  B_OUT=$(python3 -c '
import json, statistics, sys
out, keys, n = json.loads(sys.argv[1]), sys.argv[2].split(), int(sys.argv[3])
a, b = sys.argv[4:4 + n], sys.argv[4 + n:]
for k in keys:
    out["ratio_" + k] = statistics.median(json.loads(y)[k] / max(json.loads(x)[k], 1e-9) for x, y in zip(a, b))
print(json.dumps(out))' "$B_OUT" "$*" "${#a[@]}" "${a[@]}" "${b[@]}")
}

declare -A HS_HAP HS_NETD
for k in $KEYS; do
  echo "== handshakes, $k ($CONC clients, ${SECS}s, $ROUNDS rounds)" >&2
  ab_rounds "handshake $k" \
    "with_cpu $HAP_PID handshake ${HAP_TLS[$k]} $work/$k-ca.pem --concurrency $CONC" \
    "with_cpu $NETD_PID handshake ${NETD_TLS[$k]} $work/$k-ca.pem --concurrency $CONC" rate cpu_us
  HS_HAP[$k]=$A_OUT; HS_NETD[$k]=$B_OUT
done

echo "== bulk through TLS ($BULK_CONNS connections, ${SECS}s, $ROUNDS rounds)" >&2
ab_rounds "bulk" \
  "with_cpu $HAP_PID bulk ${HAP_TLS[$first_key]} $work/$first_key-ca.pem --concurrency $BULK_CONNS" \
  "with_cpu $NETD_PID bulk ${NETD_TLS[$first_key]} $work/$first_key-ca.pem --concurrency $BULK_CONNS" \
  mb_per_s cpu_ms_per_mb
BULK_HAP=$A_OUT; BULK_NETD=$B_OUT

iperf() { iperf3 -c 127.0.0.1 -p "$1" -t "$SECS" -J | python3 -c 'import json,sys; print("{\"gbit\": %f, \"errors\": 0}" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
PLAIN_BEFORE=null; PLAIN_AFTER=null
if [ -e "$work/netd-before" ]; then
  echo "== plaintext proxy, this build against NETD_BEFORE (iperf3, ${SECS}s, $ROUNDS rounds)" >&2
  rm -rf "$work/before.sock" "$work/state-before"
  NETD_CONTROL="unix:$work/before.sock" NETD_STATE_DIR="$work/state-before" \
    "$work/netd-before" --config "$work/quiet.toml" 2>"$work/before.log" & pids+=($!)
  wait_sock "$work/before.sock"
  BEFORE_PLAIN=$(free_port)
  ctl_at before start proxy plain --listen "127.0.0.1:$BEFORE_PLAIN" --upstream "127.0.0.1:$IPERF" >/dev/null
  wait_port "$BEFORE_PLAIN"
  ab_rounds "plaintext before|after" "iperf $BEFORE_PLAIN" "iperf $NETD_PLAIN" gbit
  PLAIN_BEFORE=$A_OUT; PLAIN_AFTER=$B_OUT
else
  echo "== plaintext before/after skipped: NETD_BEFORE is not set" >&2
fi

# HTTPS: netd's http kind with the ECDSA certificate against nginx serving
# one real netd response body as a static file with the same certificate.
HTTPS_NGINX=null; HTTPS_NETD=null; HTTPS_NOTE=""
NETD_HTTPS=$(free_port)
PATH_Q="/a/b?k=v1&k=v2"
ctl_at px start http h --listen "127.0.0.1:$NETD_HTTPS" --max-connections 4096 \
  --tls-cert "$work/$first_key.pem" --tls-key "$work/$first_key-key.pem" >/dev/null
wait_port "$NETD_HTTPS"
mkdir -p "$work/www/a"
if curl -sf --cacert "$work/$first_key-ca.pem" "https://localhost:$NETD_HTTPS$PATH_Q" -o "$work/www/a/b"; then
  NGINX_HTTPS=$(free_port)
  cat > "$work/nginx.conf" <<CFG
worker_processes $(nproc);
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX_HTTPS ssl;
    ssl_certificate $work/$first_key.pem;
    ssl_certificate_key $work/$first_key-key.pem;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    root $work/www;
    location / { try_files \$uri =404; }
  }
}
CFG
  nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
  wait_port "$NGINX_HTTPS"
  curl -sf --cacert "$work/$first_key-ca.pem" -o /dev/null "https://localhost:$NGINX_HTTPS$PATH_Q" \
    || bench_gave_up "nginx does not serve the file over TLS"
  wrk_https() { # port -> JSON: rps, p99_ms, errors (socket errors and non-2xx)
    wrk -t2 -c64 -d"${SECS}s" --latency "https://127.0.0.1:$1$PATH_Q" | python3 -c '
import json, re, sys
t = sys.stdin.read()
def ms(v, unit): return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", t).groups())
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
print(json.dumps({"rps": rps, "p99_ms": p99, "errors": errors}))'
  }
  echo "== HTTPS keep-alive (wrk -t2 -c64, ${SECS}s, $ROUNDS rounds)" >&2
  ab_rounds "https nginx|netd" "wrk_https $NGINX_HTTPS" "wrk_https $NETD_HTTPS" rps
  HTTPS_NGINX=$A_OUT; HTTPS_NETD=$B_OUT
else
  HTTPS_NOTE="skipped: netd's http kind does not serve HTTPS in this build"
  echo "== HTTPS $HTTPS_NOTE" >&2
fi

echo "== memory per idle TLS connection ($IDLE, a fresh proxy each round, $ROUNDS rounds)" >&2
# Each round starts a fresh HAProxy and a fresh netd (the heap the load
# above left behind would hide what new connections take), makes one
# second of handshakes as a warm-up, reads VmRSS, opens IDLE connections
# (handshake and one 64 B echo each, then idle), and reads VmRSS again.
idle_mem() { # pid port ca -> bytes per connection
  local before after line
  "$LOAD" handshake --addr "127.0.0.1:$2" --ca "$3" --concurrency 1 --duration 1 >/dev/null
  before=$(rss_kb "$1")
  coproc HOLD { "$LOAD" idle --addr "127.0.0.1:$2" --ca "$3" --concurrency "$IDLE" --duration 120; }
  read -r line <&"${HOLD[0]}" || true
  [ "$line" = "ready $IDLE" ] || bench_gave_up "only got '$line' of $IDLE idle TLS connections"
  sleep 1
  after=$(rss_kb "$1")
  exec {HOLD[1]}>&-
  wait "$HOLD_PID" 2>/dev/null || true
  echo $(( (after - before) * 1024 / IDLE ))
}
idle_hap() {
  local port pid
  port=$(free_port)
  {
    printf 'global\n  maxconn %s\n  nbthread %s\n' $((IDLE * 2 + 1000)) "$(nproc)"
    printf '  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets\n'
    printf 'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\n'
    printf 'backend be_echo\n  server s1 127.0.0.1:%s\n' "$ECHO"
    printf 'frontend fe\n  bind 127.0.0.1:%s ssl crt %s\n  default_backend be_echo\n' \
      "$port" "$work/$first_key-haproxy.pem"
  } > "$work/haproxy-idle.cfg"
  haproxy -f "$work/haproxy-idle.cfg" -db 2>>"$work/haproxy-idle.log" & pid=$!; pids+=("$pid")
  wait_port "$port"
  idle_mem "$pid" "$port" "$work/$first_key-ca.pem" >> "$work/idle-hap"
  stop_pid "$pid"
}
idle_netd() { # round
  local port
  port=$(free_port)
  start_netd "idle$1" "$work/quiet.toml"
  if [ "$NETD_WHAT" = proxy ]; then
    ctl_at "idle$1" start proxy t --listen "127.0.0.1:$port" --upstream "127.0.0.1:$ECHO" \
      --tls-cert "$work/$first_key.pem" --tls-key "$work/$first_key-key.pem" --max-connections 100000 >/dev/null
  else
    ctl_at "idle$1" start tcp-echo t --listen "127.0.0.1:$port" \
      --tls-cert "$work/$first_key.pem" --tls-key "$work/$first_key-key.pem" --max-connections 100000 >/dev/null
  fi
  wait_port "$port"
  idle_mem "$netd_pid" "$port" "$work/$first_key-ca.pem" >> "$work/idle-netd"
  stop_pid "$netd_pid"
}
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then idle_hap; idle_netd "$round"; else idle_netd "$round"; idle_hap; fi
  echo "round $round idle: haproxy $(tail -n1 "$work/idle-hap") netd $(tail -n1 "$work/idle-netd") B/conn" >&2
done
M_HAP=$(median $(cat "$work/idle-hap")); M_NETD=$(median $(cat "$work/idle-netd"))
M_HAP=${M_HAP%.*}; M_NETD=${M_NETD%.*}
M_RATIO=$(paste -d' ' "$work/idle-hap" "$work/idle-netd" | python3 -c '
import statistics, sys
print(f"{statistics.median(int(n) / max(int(h), 1) for h, n in (l.split() for l in sys.stdin)):.2f}")')
echo "machine: load average $(cut -d' ' -f1-3 /proc/loadavg) at the end" >&2

hs_args=()
for k in $KEYS; do hs_args+=("$k" "${HS_HAP[$k]}" "${HS_NETD[$k]}"); done
python3 - "$NETD_WHAT" "$SECS" "$CONC" "$BULK_CONNS" "$ROUNDS" "$IDLE" "$BULK_HAP" "$BULK_NETD" \
  "$PLAIN_BEFORE" "$PLAIN_AFTER" "$HTTPS_NGINX" "$HTTPS_NETD" "$HTTPS_NOTE" "$M_HAP" "$M_NETD" "$M_RATIO" "${hs_args[@]}" <<'PY'
import json, sys
what, secs, conc, bulk_conns, rounds, idle = sys.argv[1:7]
bh, bn, pb, pa, wn, wd = (json.loads(x) for x in sys.argv[7:13])
https_note, mh, mn, mr = sys.argv[13], int(sys.argv[14]), int(sys.argv[15]), sys.argv[16]
hs = sys.argv[17:]
def ratio(a, b): return f"{a / b:.2f}" if b else "-"
def rr(r, k): return f"{r['ratio_' + k]:.2f}"
netd = "netd proxy" if what == "proxy" else "netd tcp-echo (TLS, no upstream hop)"
print(f"TLS: netd vs HAProxy 2.6 / nginx, same certificates and clients, loopback ({secs}s runs, median of {rounds} alternating rounds)")
print(f"  handshake: tls_load handshake --concurrency {conc} (TLS 1.3, resumption off; connect, handshake, 64 B echo, close)")
print(f"  bulk:      tls_load bulk --concurrency {bulk_conns} (streams echoed back through the TLS connection)")
print(f"  https:     wrk -t2 -c64 --latency https://127.0.0.1:PORT/a/b?k=v1&k=v2 (keep-alive; nginx: the same body as a static file)")
print(f"  memory:    VmRSS before/after tls_load idle --concurrency {idle}, a fresh proxy each round after a 1 s warm-up")
print(f"  netd: netctl start proxy P --listen ... --upstream ECHO --tls-cert ... --tls-key ...; HAProxy: mode tcp, bind ... ssl crt,")
print(f"        ssl-min-ver TLSv1.3 no-tls-tickets, nbthread = cores; the same plain netd tcp-echo behind both")
if what != "proxy":
    print("  NOTE: this build's proxy does not terminate TLS: the netd column is a TLS tcp-echo served by netd itself,")
    print("        HAProxy's is TLS terminated in front of a plain echo (one more hop): a different comparison")
print("  (netd/peer: the ratio of the medians; per round: the median of the rounds' own ratios)")
print(f"| metric | HAProxy / nginx | {netd} | netd/peer | per round |")
print("| --- | --- | --- | --- | --- |")
for i in range(0, len(hs), 3):
    k, h, n = hs[i], json.loads(hs[i + 1]), json.loads(hs[i + 2])
    print(f"| TLS handshakes/s, {k} | {h['rate']:.0f} | {n['rate']:.0f} | {ratio(n['rate'], h['rate'])} | {rr(n, 'rate')} |")
    print(f"| server CPU per handshake, {k}, µs | {h['cpu_us']:.0f} | {n['cpu_us']:.0f} | {ratio(n['cpu_us'], h['cpu_us'])} | {rr(n, 'cpu_us')} |")
    print(f"| server CPU, {k}, % of a core | {h['cpu_pct']:.0f} | {n['cpu_pct']:.0f} | | |")
    print(f"| handshake exchange p99, {k}, µs | {h['p99_us']:.0f} | {n['p99_us']:.0f} | {ratio(n['p99_us'], h['p99_us'])} | |")
    print(f"| negotiated, {k} | {h['version']} {h['cipher']} {h['group']} | {n['version']} {n['cipher']} {n['group']} | | |")
    print(f"| client errors, {k} (all rounds) | {h['errors']} | {n['errors']} | | |")
print(f"| bulk through TLS, MB/s | {bh['mb_per_s']:.0f} | {bn['mb_per_s']:.0f} | {ratio(bn['mb_per_s'], bh['mb_per_s'])} | {rr(bn, 'mb_per_s')} |")
print(f"| server CPU per MB, ms | {bh['cpu_ms_per_mb']:.2f} | {bn['cpu_ms_per_mb']:.2f} | {ratio(bn['cpu_ms_per_mb'], bh['cpu_ms_per_mb'])} | {rr(bn, 'cpu_ms_per_mb')} |")
print(f"| bulk errors (all rounds) | {bh['errors']} | {bn['errors']} | | |")
if pb:
    print(f"| plaintext proxy bulk, Gbit/s (iperf3): before TLS / this build | {pb['gbit']:.2f} | {pa['gbit']:.2f} | {ratio(pa['gbit'], pb['gbit'])} (after/before) | {rr(pa, 'gbit')} |")
else:
    print("| plaintext proxy bulk before/after TLS | - | - | skipped: NETD_BEFORE not set | |")
if wn:
    print(f"| HTTPS requests/s, keep-alive (nginx / netd http) | {wn['rps']:.0f} | {wd['rps']:.0f} | {ratio(wd['rps'], wn['rps'])} | {rr(wd, 'rps')} |")
    print(f"| HTTPS latency p99, ms | {wn['p99_ms']:.2f} | {wd['p99_ms']:.2f} | {ratio(wd['p99_ms'], wn['p99_ms'])} | |")
    print(f"| HTTPS errors (socket, non-2xx; all rounds) | {wn['errors']} | {wd['errors']} | | |")
else:
    print(f"| HTTPS requests/s | - | - | {https_note} | |")
print(f"| RSS per idle TLS connection, bytes ({idle} open) | {mh} | {mn} | {ratio(mn, mh)} | {mr} |")
PY
