#!/usr/bin/env bash
# netd's HTTP GET echo (a dynamic JSON body built per request) against nginx
# serving a static JSON file of the same size, side by side in one run with
# wrk (2 threads, 64 connections, 10 s), alternating nginx/netd for ROUNDS
# rounds and reporting the median round of each. Loopback only. Both run 2
# workers (nginx worker_processes 2; netd's tokio runtime has one worker per
# core, 2 here); access logging is off for both.
#
#   bench/http_bench.sh          # SECS=10 CONNS=64 THREADS=2 ROUNDS=3
. "$(dirname "$0")/lib.sh"
SECS=${SECS:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}

need nginx wrk curl
build_release --bin netd --bin netctl

chmod 755 "$work"  # nginx workers (www-data) read the file

NETD_PORT=$(free_port)
quiet_config "$work/netd.toml"
start_netd netd "$work/netd.toml"
ctl_at netd start http h --listen "127.0.0.1:$NETD_PORT" --max-connections 4096 >/dev/null
wait_port "$NETD_PORT"

# nginx serves one real netd response body, byte for byte the same size.
PATH_Q="/a/b?k=v1&k=v2"
mkdir -p "$work/www/a"
curl -s "http://127.0.0.1:$NETD_PORT$PATH_Q" > "$work/www/a/b"
BODY=$(stat -c %s "$work/www/a/b")
NGINX_PORT=$(free_port)
cat > "$work/nginx.conf" <<CFG
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $work/www;
    location / { try_files \$uri =404; }
  }
}
CFG
nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
wait_port "$NGINX_PORT"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT$PATH_Q")" = 200 ] || { echo "nginx does not serve the file" >&2; exit 1; }

run_wrk() { # port -> "rps p50_ms p99_ms non2xx errors"
  wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$1$PATH_Q" > "$work/wrk.out"
  python3 - "$work/wrk.out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v, unit): return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(*re.search(r"50%\s+([\d.]+)(us|ms|s)", t).groups())
p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", t).groups())
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
errors = re.search(r"Socket errors: (.*)", t)
print(rps, p50, p99, non2xx.group(1) if non2xx else 0, (errors.group(1).replace(" ", "") if errors else "none"))
PY
}

: > "$work/results"
for r in $(seq "$ROUNDS"); do
  for who in nginx netd; do
    port=$([ "$who" = nginx ] && echo "$NGINX_PORT" || echo "$NETD_PORT")
    res=$(run_wrk "$port")
    echo "round $r $who: $res" >&2
    echo "$who $res" >> "$work/results"
  done
done

echo "wrk -t$THREADS -c$CONNS -d${SECS}s --latency http://127.0.0.1:PORT$PATH_Q  (response body $BODY bytes)"
python3 - "$work/results" "$BODY" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(who, i): return statistics.median(float(r[i]) for r in rows if r[0] == who)
n, d = {}, {}
for i, k in enumerate(["rps", "p50", "p99"], start=1):
    n[k], d[k] = med("nginx", i), med("netd", i)
bad = {w: sum(int(r[4]) for r in rows if r[0] == w) for w in ("nginx", "netd")}
print("| metric (median of rounds) | nginx (static file) | netd (dynamic JSON echo) | netd/nginx |")
print("| --- | --- | --- | --- |")
print(f"| requests/s | {n['rps']:.0f} | {d['rps']:.0f} | {d['rps']/n['rps']:.2f} |")
print(f"| latency p50, ms | {n['p50']:.2f} | {d['p50']:.2f} | {d['p50']/n['p50']:.2f} |")
print(f"| latency p99, ms | {n['p99']:.2f} | {d['p99']:.2f} | {d['p99']/n['p99']:.2f} |")
print(f"| response body, bytes | {sys.argv[2]} | {sys.argv[2]} (±2, timestamp) | |")
print(f"| non-2xx responses | {bad['nginx']} | {bad['netd']} | |")
PY
