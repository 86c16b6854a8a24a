#!/usr/bin/env bash
# What netd's access log costs, and netd with it against nginx with its own,
# in one run: wrk (2 threads, 64 connections, 10 s) against
#   netd-on      an HTTP listener with the access log on (the default),
#   netd-off     the same daemon's second listener with `access_log = false`,
#   nginx-log    nginx (2 workers) serving a static file holding the same
#                body, `access_log FILE` (its default: a write per request),
#   nginx-buf    the same with `access_log FILE buffer=64k flush=1s`,
# alternating the four for ROUNDS rounds and reporting the median of each.
# Both access logs go to files in one temporary directory (truncated after
# each run, once their lines are counted). CPU is the server's user+system
# time over the run (netd's process; nginx's workers) per request: on a
# machine busy with other work, req/s follows the CPU the scheduler hands
# out (the "cores" row) and the CPU ratios are the steadier measure.
# Loopback only.
#
#   bench/access_log_bench.sh     # SECS=10 CONNS=64 THREADS=2 ROUNDS=3
. "$(dirname "$0")/lib.sh"
SECS=${SECS:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}

need nginx wrk curl
build_release --bin netd --bin netctl

chmod 755 "$work"  # nginx workers (www-data) read the file and write logs

read -r ON_PORT OFF_PORT METRICS_PORT LOG_PORT BUF_PORT < <(free_ports 5)
cat > "$work/netd.toml" <<CFG
[log]
level = "info"
[access_log]
path = "$work/logs/netd-access.log"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[[listener]]
name = "on"
kind = "http"
listen = "127.0.0.1:$ON_PORT"
max_connections = 4096
[[listener]]
name = "off"
kind = "http"
listen = "127.0.0.1:$OFF_PORT"
max_connections = 4096
access_log = false
CFG
start_netd netd "$work/netd.toml"; NETD_PID=$netd_pid
wait_port "$ON_PORT"; wait_port "$OFF_PORT"

PATH_Q="/a/b?k=v1&k=v2"
mkdir -p "$work/www/a" "$work/nginx-logs"
chmod 777 "$work/nginx-logs"
curl -s "http://127.0.0.1:$ON_PORT$PATH_Q" > "$work/www/a/b"
BODY=$(stat -c %s "$work/www/a/b")
cat > "$work/nginx.conf" <<CFG
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  default_type application/json;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$LOG_PORT;
    access_log $work/nginx-logs/log.log;
    root $work/www;
    location / { try_files \$uri =404; }
  }
  server {
    listen 127.0.0.1:$BUF_PORT;
    access_log $work/nginx-logs/buf.log combined buffer=64k flush=1s;
    root $work/www;
    location / { try_files \$uri =404; }
  }
}
CFG
nginx -c "$work/nginx.conf" -g 'daemon off;' & NGINX_PID=$!; pids+=($NGINX_PID)
wait_port "$LOG_PORT"; wait_port "$BUF_PORT"
for p in "$LOG_PORT" "$BUF_PORT"; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p$PATH_Q")" = 200 ] || { echo "nginx does not serve the file" >&2; exit 1; }
done

nginx_workers() { pgrep -P "$NGINX_PID" | tr '\n' ' '; }
dropped() { curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '$1=="netd_access_log_dropped_total"{print $2}'; }

run() { # who -> "rps p50_ms p99_ms cpu_us_per_req logged_lines requests dropped errors"
  local who=$1 port procs log
  case $who in
    netd-on) port=$ON_PORT; procs=$NETD_PID; log="$work/logs/netd-access.log" ;;
    netd-off) port=$OFF_PORT; procs=$NETD_PID; log="$work/logs/netd-access.log" ;;
    nginx-log) port=$LOG_PORT; procs=$(nginx_workers); log="$work/nginx-logs/log.log" ;;
    nginx-buf) port=$BUF_PORT; procs=$(nginx_workers); log="$work/nginx-logs/buf.log" ;;
  esac
  local d0 c0 c1 d1
  d0=$(dropped)
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $procs)
  wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$port$PATH_Q" > "$work/wrk.out"
  # shellcheck disable=SC2086
  c1=$(cpu_ticks $procs)
  sleep 1.5  # both writers flush within a second
  d1=$(dropped)
  local lines
  lines=$(wc -l < "$log" 2>/dev/null || echo 0)
  : > "$log"
  python3 - "$work/wrk.out" "$((c1 - c0))" "$HZ" "$lines" "$((d1 - d0))" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
ticks, hz, lines, dropped = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def ms(v, unit): return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
n = int(re.search(r"(\d+) requests in", t).group(1))
p50 = ms(*re.search(r"50%\s+([\d.]+)(us|ms|s)", t).groups())
p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", t).groups())
errors = re.search(r"Socket errors: (.*)", t)
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
cpu_us = ticks * 1e6 / hz / max(n, 1)
bad = (errors.group(1).replace(" ", "") if errors else "none") + "/non2xx=" + (non2xx.group(1) if non2xx else "0")
print(rps, p50, p99, f"{cpu_us:.2f}", lines, n, dropped, bad)
PY
}

: > "$work/results"
for r in $(seq "$ROUNDS"); do
  for who in netd-on netd-off nginx-log nginx-buf; do
    res=$(run "$who")
    echo "round $r $who: $res" >&2
    echo "$who $res" >> "$work/results"
  done
done

echo "wrk -t$THREADS -c$CONNS -d${SECS}s --latency http://127.0.0.1:PORT$PATH_Q  (response body $BODY bytes; $ROUNDS alternating rounds, medians)"
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
who = ["netd-on", "netd-off", "nginx-log", "nginx-buf"]
def med(w, i): return statistics.median(float(r[i]) for r in rows if r[0] == w)
m = {w: {k: med(w, i) for i, k in enumerate(["rps", "p50", "p99", "cpu"], start=1)} for w in who}
logged = {w: sum(int(r[5]) for r in rows if r[0] == w) / max(1, sum(int(r[6]) for r in rows if r[0] == w)) for w in who}
drops = {w: sum(int(r[7]) for r in rows if r[0] == w) for w in who}
print("| measure (median of rounds) | netd, log on | netd, log off | nginx, access_log | nginx, access_log buffer=64k |")
print("| --- | --- | --- | --- | --- |")
print("| requests/s | " + " | ".join(f"{m[w]['rps']:.0f}" for w in who) + " |")
print("| server CPU per request, µs | " + " | ".join(f"{m[w]['cpu']:.1f}" for w in who) + " |")
# What the scheduler gave the server: on a busy machine a server may get
# less CPU than it could use, and req/s then says more about that than
# about the server.
print("| server CPU used, cores | " + " | ".join(f"{m[w]['cpu'] * m[w]['rps'] / 1e6:.2f}" for w in who) + " |")
print("| latency p50, ms | " + " | ".join(f"{m[w]['p50']:.2f}" for w in who) + " |")
print("| latency p99, ms | " + " | ".join(f"{m[w]['p99']:.2f}" for w in who) + " |")
print("| lines logged per request | " + " | ".join(f"{logged[w]:.3f}" for w in who) + " |")
print(f"| lines dropped (netd) | {drops['netd-on']} | {drops['netd-off']} | | |")
print()
on, off, ng, nb = (m[w]["rps"] for w in who)
print("| ratio | value | goal |")
print("| --- | --- | --- |")
print(f"| netd log on / log off, req/s | {on/off:.2f} | ≥ 0.95 |")
print(f"| netd log on / nginx access_log on, req/s | {on/ng:.2f} | ≥ 1.2 |")
print(f"| netd log on / nginx access_log buffer=64k, req/s | {on/nb:.2f} | |")
print(f"| netd CPU per request, log on / log off | {m['netd-on']['cpu']/m['netd-off']['cpu']:.2f} | |")
print(f"| netd log on / nginx access_log on, requests per CPU-second | {m['nginx-log']['cpu']/m['netd-on']['cpu']:.2f} | |")
PY
