#!/usr/bin/env bash
# netd's http-proxy against HAProxy (mode http) and nginx (proxy_pass), side
# by side in one run, same upstream, same clients, loopback only, release
# build:
#   1. keep-alive both sides: wrk -t2 -c50 (keep-alive) through each proxy
#      to one upstream nginx answering a small JSON body (`return 200`),
#      ROUNDS rounds in rotating order (direct to the upstream first in each
#      round, for "p99 added"); medians of each proxy's requests/s, p50,
#      p99, and of its CPU time per request (utime + stime from /proc, all
#      of a proxy's processes); the ratios netd/HAProxy and netd/nginx.
#      All three add X-Forwarded-For (netd's default; HAProxy `option
#      forwardfor`, nginx `proxy_set_header X-Forwarded-For`), none logs.
#   2. fault overhead: three http-proxy listeners of the same netd, with no
#      fault rule, 1 abort rule matching no request and 100 such rules,
#      wrk through each in rotating order; ratios to "no rules".
#   3. fault accuracy: a 10% abort (`--toxicity 0.1`, 503) over 20,000
#      requests (bench/http_load.rs counts every answer: share of 503s), a
#      200 ms delay (every latency recorded: p50).
# Parts 2 and 3 need the HTTP fault types: while netd refuses them
# (`netctl fault add` fails), those rows say so and the run goes on.
#
#   bench/http_proxy_bench.sh    # SECS=5 CONNS=50 THREADS=2 ROUNDS=3 ABORTS=20000 by default
. "$(dirname "$0")/lib.sh"
SECS=${SECS:-5}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
ABORTS=${ABORTS:-20000}
CORES=$(nproc)

need nginx haproxy wrk curl
build_release --bin netd --bin netctl --example http_load
LOAD=$EXAMPLES/http_load
ulimit -n "$(ulimit -Hn)"
chmod 755 "$work"  # nginx workers (www-data) read under it

read -r UP NGX HAP NETD_P NETD_F1 NETD_F100 NETD_ABORT NETD_DELAY < <(free_ports 8)
PATH_Q=/api/items

# The upstream: nginx answering {"ok":true} to every request, keep-alive.
mkdir -p "$work/ngx"
nginx_json_upstream "$UP"

# nginx as the proxy: upstream keep-alive, HTTP/1.1 to the upstream.
cat > "$work/ngx/nginx.conf" <<CFG
worker_processes $CORES;
pid $work/ngx/nginx.pid;
error_log $work/ngx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream up { server 127.0.0.1:$UP; keepalive 32; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CFG
nginx -c "$work/ngx/nginx.conf" -g 'daemon off;' & NGX_MASTER=$!; pids+=($NGX_MASTER)

# HAProxy mode http, connections to the upstream shared (http-reuse always).
cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 9000
  nbthread $CORES
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 5m
  timeout server 5m
  timeout http-keep-alive 5m
frontend fe
  bind 127.0.0.1:$HAP
  default_backend be
backend be
  server s1 127.0.0.1:$UP maxconn 1000
CFG
haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" & HAP_PID=$!; pids+=($HAP_PID)

# netd: one process, an http-proxy listener per case.
quiet_config "$work/netd.toml"
start_netd px "$work/netd.toml"; NETD_PID=$netd_pid
for l in "hp $NETD_P" "hp1 $NETD_F1" "hp100 $NETD_F100" "hpa $NETD_ABORT" "hpd $NETD_DELAY"; do
  set -- $l
  ctl_at px start http-proxy "$1" --listen "127.0.0.1:$2" -u "127.0.0.1:$UP" --max-connections 4096 >/dev/null
done
for p in "$UP" "$NGX" "$HAP" "$NETD_P" "$NETD_F1" "$NETD_F100"; do wait_port "$p"; done
for p in "$UP" "$NGX" "$HAP" "$NETD_P"; do
  body=$(curl -s "http://127.0.0.1:$p$PATH_Q")
  [ "$body" = '{"ok":true}' ] || { echo "port $p answers '$body', not the upstream's JSON" >&2; exit 1; }
done

# The fault rules (the HTTP fault types may not be in this build yet).
FAULTS=yes
fault_add() { ctl_at px fault add "$@" >/dev/null 2>"$work/fault.err"; }
if fault_add hp1 f1 --type abort --http-status 503 --path-prefix /nomatch-1; then
  for i in $(seq 100); do
    fault_add hp100 "f$i" --type abort --http-status 503 --path-prefix "/nomatch-$i" \
      || bench_gave_up "fault $i on hp100: $(cat "$work/fault.err")"
  done
  fault_add hpa ab --type abort --http-status 503 --toxicity 0.1 \
    || bench_gave_up "abort fault: $(cat "$work/fault.err")"
  fault_add hpd d200 --type delay --delay 200ms \
    || bench_gave_up "delay fault: $(cat "$work/fault.err")"
else
  FAULTS="no: $(head -c 200 "$work/fault.err")"
  echo "HTTP faults refused by this build, fault parts skipped: $FAULTS" >&2
fi

# wrk through port $1, the CPU ticks of pids $2... around it:
# "rps p50_ms p99_ms non2xx errors cpu_us_per_request"
run_wrk() {
  local port=$1 before after
  shift
  before=$( [ $# -gt 0 ] && cpu_ticks "$@" || echo 0)
  wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$port$PATH_Q" > "$work/wrk.out"
  after=$( [ $# -gt 0 ] && cpu_ticks "$@" || echo 0)
  python3 - "$work/wrk.out" "$before" "$after" "$HZ" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v, unit): return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
total = int(re.search(r"(\d+) requests in", t).group(1))
p50 = ms(*re.search(r"50%\s+([\d.]+)(us|ms|s)", t).groups())
p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", t).groups())
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errors = sum(map(int, m.groups())) if m else 0
cpu = (int(sys.argv[3]) - int(sys.argv[2])) * 1e6 / int(sys.argv[4]) / max(total, 1)
print(rps, p50, p99, non2xx.group(1) if non2xx else 0, errors, cpu)
PY
}
ngx_pids() { echo "$NGX_MASTER" $(pgrep -P "$NGX_MASTER"); }

echo "== keep-alive: wrk -t$THREADS -c$CONNS -d${SECS}s, $ROUNDS rounds" >&2
: > "$work/results"
order=(haproxy nginx netd)
for r in $(seq "$ROUNDS"); do
  echo "direct $(run_wrk "$UP")" >> "$work/results"
  for who in "${order[@]}"; do
    case $who in
      haproxy) res=$(run_wrk "$HAP" "$HAP_PID") ;;
      nginx) res=$(run_wrk "$NGX" $(ngx_pids)) ;;
      netd) res=$(run_wrk "$NETD_P" "$NETD_PID") ;;
    esac
    echo "$who $res" >> "$work/results"
  done
  tail -n 4 "$work/results" | sed "s/^/round $r: /" >&2
  order=("${order[@]:1}" "${order[0]}")  # rotate: each goes first once
done

if [ "$FAULTS" = yes ]; then
  echo "== fault overhead: 0, 1, 100 rules matching nothing, $ROUNDS rounds" >&2
  order=(hp hp1 hp100)
  for r in $(seq "$ROUNDS"); do
    for who in "${order[@]}"; do
      case $who in
        hp) port=$NETD_P ;; hp1) port=$NETD_F1 ;; hp100) port=$NETD_F100 ;;
      esac
      echo "$who $(run_wrk "$port" "$NETD_PID")" >> "$work/results"
    done
    tail -n 3 "$work/results" | sed "s/^/round $r: /" >&2
    order=("${order[@]:1}" "${order[0]}")
  done
  echo "== fault accuracy" >&2
  "$LOAD" "http://127.0.0.1:$NETD_ABORT$PATH_Q" --conns "$CONNS" --requests "$ABORTS" --secs 120 > "$work/abort.json"
  "$LOAD" "http://127.0.0.1:$NETD_DELAY$PATH_Q" --conns "$CONNS" --requests 2000 --secs 120 > "$work/delay.json"
  cat "$work/abort.json" "$work/delay.json" >&2
fi

python3 - "$work/results" "$FAULTS" "$work/abort.json" "$work/delay.json" "$SECS" "$CONNS" "$THREADS" "$ROUNDS" "$CORES" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
faults, abort_f, delay_f, secs, conns, threads, rounds, cores = sys.argv[2:10]
def med(who, i):
    v = [float(r[i]) for r in rows if r[0] == who]
    return statistics.median(v) if v else float("nan")
def tot(who, i): return sum(int(float(r[i])) for r in rows if r[0] == who)
def ratio(a, b): return f"{a / b:.2f}" if b else "-"
W = ["direct", "haproxy", "nginx", "netd"]
m = {w: {k: med(w, i) for i, k in enumerate(["rps", "p50", "p99", "non2xx", "err", "cpu"], 1)} for w in W}
added = {w: m[w]["p99"] - m["direct"]["p99"] for w in W}
print(f"http-proxy, keep-alive both sides: wrk -t{threads} -c{conns} -d{secs}s --latency http://127.0.0.1:PORT/api/items")
print(f"  upstream: nginx `return 200 '{{\"ok\":true}}'` (application/json, keep-alive, {cores} workers); median of {rounds} rounds,")
print(f"  the proxies' order rotating, direct first; {cores} workers/threads each; all add X-Forwarded-For, none logs")
print("  (p99 added = proxied p99 - direct p99, medians; CPU = utime + stime of all the proxy's processes / requests)")
print("| metric | direct | HAProxy | nginx | netd | netd/HAProxy | netd/nginx |")
print("| --- | --- | --- | --- | --- | --- | --- |")
print(f"| requests/s | {m['direct']['rps']:.0f} | {m['haproxy']['rps']:.0f} | {m['nginx']['rps']:.0f} | {m['netd']['rps']:.0f} | {ratio(m['netd']['rps'], m['haproxy']['rps'])} | {ratio(m['netd']['rps'], m['nginx']['rps'])} |")
print(f"| latency p50, ms | {m['direct']['p50']:.2f} | {m['haproxy']['p50']:.2f} | {m['nginx']['p50']:.2f} | {m['netd']['p50']:.2f} | {ratio(m['netd']['p50'], m['haproxy']['p50'])} | {ratio(m['netd']['p50'], m['nginx']['p50'])} |")
print(f"| latency p99, ms | {m['direct']['p99']:.2f} | {m['haproxy']['p99']:.2f} | {m['nginx']['p99']:.2f} | {m['netd']['p99']:.2f} | {ratio(m['netd']['p99'], m['haproxy']['p99'])} | {ratio(m['netd']['p99'], m['nginx']['p99'])} |")
print(f"| p99 added by the proxy, ms | - | {added['haproxy']:.2f} | {added['nginx']:.2f} | {added['netd']:.2f} | {ratio(added['netd'], added['haproxy'])} | {ratio(added['netd'], added['nginx'])} |")
print(f"| proxy CPU per request, µs | - | {m['haproxy']['cpu']:.1f} | {m['nginx']['cpu']:.1f} | {m['netd']['cpu']:.1f} | {ratio(m['netd']['cpu'], m['haproxy']['cpu'])} | {ratio(m['netd']['cpu'], m['nginx']['cpu'])} |")
print(f"| non-2xx / socket errors (all rounds) | {tot('direct', 4)} / {tot('direct', 5)} | {tot('haproxy', 4)} / {tot('haproxy', 5)} | {tot('nginx', 4)} / {tot('nginx', 5)} | {tot('netd', 4)} / {tot('netd', 5)} | | |")
if faults != "yes":
    print(f"\nfault overhead and accuracy: not run ({faults})")
    sys.exit(0)
F = ["hp", "hp1", "hp100"]
f = {w: {k: med(w, i) for i, k in enumerate(["rps", "p50", "p99", "non2xx", "err", "cpu"], 1)} for w in F}
print("\nfault overhead: the same netd, three http-proxy listeners, abort rules whose path prefix no request has")
print("| rules | requests/s | vs no rules | p99, ms | CPU per request, µs | vs no rules | non-2xx / errors |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for w, label in zip(F, ["none", "1", "100"]):
    print(f"| {label} | {f[w]['rps']:.0f} | {ratio(f[w]['rps'], f['hp']['rps'])} | {f[w]['p99']:.2f} | {f[w]['cpu']:.1f} | {ratio(f[w]['cpu'], f['hp']['cpu'])} | {tot(w, 4)} / {tot(w, 5)} |")
a, d = json.load(open(abort_f)), json.load(open(delay_f))
n503 = a["statuses"].get("503", 0)
share = 100.0 * n503 / max(a["requests"], 1)
print("\nfault accuracy (bench/http_load.rs: every answer counted, every latency recorded)")
print("| fault | requests | measured | goal | met |")
print("| --- | --- | --- | --- | --- |")
print(f"| abort 503, --toxicity 0.1 | {a['requests']} ({a['errors']} errors) | {n503} answers 503: {share:.2f}% | 10% ± 1 pt | {'yes' if abs(share - 10) <= 1 else 'no'} |")
p50 = d["p50_us"] / 1000
print(f"| delay 200ms | {d['requests']} ({d['errors']} errors) | p50 {p50:.1f} ms, p99 {d['p99_us'] / 1000:.1f} ms | 200 ± 5 ms at p50 | {'yes' if abs(p50 - 200) <= 5 else 'no'} |")
PY
