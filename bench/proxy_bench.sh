#!/usr/bin/env bash
# netd's TCP proxy against HAProxy (Debian's haproxy, mode tcp), side by side
# in one run, same upstream, same clients, loopback only:
#   1. one bulk stream (iperf3 through each proxy; direct as reference)
#   2. new connections per second, 50 concurrent clients doing connect,
#      64 B request, 64 B reply, close (bench/conn_load.rs), with p50/p99
#      latency; the latency a proxy adds is its figure minus the direct one;
#      and each proxy's CPU time per connection over that run (clients,
#      upstream and proxy share the cores, so the rate follows total CPU);
#      then the same with one client, for the latency at light load
#   3. HTTP with a new connection per request: wrk -H "Connection: close"
#      through each proxy to nginx (a 64 B static file), requests/s and
#      each proxy's CPU time per request
#   4. resident memory per idle proxied connection, 5,000 connections open
# Prints one table with netd/HAProxy ratios.
#
#   bench/proxy_bench.sh          # SECS=5 CONNS=50 ROUNDS=3 IDLE=5000 by default
. "$(dirname "$0")/lib.sh"
SECS=${SECS:-5}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
IDLE=${IDLE:-5000}

need haproxy iperf3 nginx wrk
build_release --bin netd --bin netctl --example conn_load
LOAD=$EXAMPLES/conn_load
ulimit -n "$(ulimit -Hn)"  # 5,000 proxied connections need ~10,000 fds in the proxy

chmod 755 "$work"  # nginx workers (www-data) read the file

# Upstreams: a netd TCP echo (its own process) and an iperf3 server.
quiet_config "$work/quiet.toml"
start_netd up "$work/quiet.toml"; UP_PID=$netd_pid
ECHO=$(free_port)
ctl_at up start tcp-echo up --listen "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
IPERF=$(free_port)
iperf3 -s -p "$IPERF" -D --pidfile "$work/iperf.pid"; sleep 0.3; pids+=("$(cat "$work/iperf.pid")")

# nginx: a 64-byte file, no access log, 2 workers.
NGINX=$(free_port)
mkdir -p "$work/www"; head -c 64 /dev/zero | tr '\0' x > "$work/www/x"
cat > "$work/nginx.conf" <<CFG
worker_processes $(nproc);
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$NGINX; root $work/www; }
}
CFG
nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)

# The proxies: each has a port to the echo upstream, one to iperf3 and one
# to nginx.
NETD_ECHO=$(free_port); NETD_IPERF=$(free_port); NETD_NGINX=$(free_port)
HAP_ECHO=$(free_port); HAP_IPERF=$(free_port); HAP_NGINX=$(free_port)
start_netd px "$work/quiet.toml"; NETD_PID=$netd_pid
ctl_at px start proxy pe --listen "127.0.0.1:$NETD_ECHO" --upstream "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
ctl_at px start proxy pi --listen "127.0.0.1:$NETD_IPERF" --upstream "127.0.0.1:$IPERF" >/dev/null
ctl_at px start proxy pn --listen "127.0.0.1:$NETD_NGINX" --upstream "127.0.0.1:$NGINX" --max-connections 100000 >/dev/null
cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 9000
  nbthread $(nproc)
defaults
  mode tcp
  timeout connect 5s
  timeout client 5m
  timeout server 5m
frontend fe_echo
  bind 127.0.0.1:$HAP_ECHO
  default_backend be_echo
backend be_echo
  server s1 127.0.0.1:$ECHO
frontend fe_iperf
  bind 127.0.0.1:$HAP_IPERF
  default_backend be_iperf
backend be_iperf
  server s1 127.0.0.1:$IPERF
frontend fe_nginx
  bind 127.0.0.1:$HAP_NGINX
  default_backend be_nginx
backend be_nginx
  server s1 127.0.0.1:$NGINX
CFG
haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" & HAP_PID=$!; pids+=($HAP_PID)
wait_port "$HAP_ECHO"; wait_port "$NETD_ECHO"; wait_port "$NGINX"

iperf() { iperf3 -c 127.0.0.1 -p "$1" -t "$SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'; }
rate() { "$LOAD" rate "127.0.0.1:$1" --conns "$CONNS" --secs "$SECS"; }
# the process's user and system ticks, then the whole machine's busy ticks
# (all cores: everything but idle and iowait)
cpu_split() { echo "$(awk '{print $14, $15}' "/proc/$1/stat") $(awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat)"; }
# rate run through a proxy, then that proxy's CPU time per exchange in µs
# (user + system, and each alone) and the machine's, appended to the JSON
# line
rate_cpu() { # pid port
  local before out after
  before=$(cpu_split "$1"); out=$(rate "$2"); after=$(cpu_split "$1")
  python3 -c "
import json, sys
r = json.loads(sys.argv[1])
b, a = (list(map(int, x.split())) for x in sys.argv[2:4])
per = 1e6 / int(sys.argv[4]) / max(r['exchanges'], 1)
r['user_us'], r['sys_us'], r['machine_us'] = ((a[i] - b[i]) * per for i in range(3))
r['cpu_us'] = r['user_us'] + r['sys_us']
print(json.dumps(r))" "$out" "$before" "$after" "$HZ"
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

echo "== bulk stream (iperf3 -t $SECS, $ROUNDS rounds)" >&2
# One stream moves by ±20% from run to run here: medians of alternating
# rounds, as for the rates below.
T_DIRECT=(); T_HAP=(); T_NETD=()
for round in $(seq "$ROUNDS"); do
  T_DIRECT+=("$(iperf "$IPERF")")
  if [ $((round % 2)) -eq 1 ]; then
    T_HAP+=("$(iperf "$HAP_IPERF")"); T_NETD+=("$(iperf "$NETD_IPERF")")
  else
    T_NETD+=("$(iperf "$NETD_IPERF")"); T_HAP+=("$(iperf "$HAP_IPERF")")
  fi
  echo "round $round: direct ${T_DIRECT[-1]}  haproxy ${T_HAP[-1]}  netd ${T_NETD[-1]} Gbit/s" >&2
done
T_DIRECT=$(median "${T_DIRECT[@]}"); T_HAP=$(median "${T_HAP[@]}"); T_NETD=$(median "${T_NETD[@]}")

echo "== connection rate ($CONNS clients, ${SECS}s)" >&2
# ROUNDS rounds, the proxies' order swapped each round; each figure below
# is the median over the rounds (this machine's speed drifts by several
# percent from minute to minute).
R_DIRECT=(); R_HAP=(); R_NETD=()
for round in $(seq "$ROUNDS"); do
  R_DIRECT+=("$(rate_cpu "$UP_PID" "$ECHO")")  # for the machine's CPU per connection
  if [ $((round % 2)) -eq 1 ]; then
    R_HAP+=("$(rate_cpu "$HAP_PID" "$HAP_ECHO")"); R_NETD+=("$(rate_cpu "$NETD_PID" "$NETD_ECHO")")
  else
    R_NETD+=("$(rate_cpu "$NETD_PID" "$NETD_ECHO")"); R_HAP+=("$(rate_cpu "$HAP_PID" "$HAP_ECHO")")
  fi
  echo "round $round: direct ${R_DIRECT[-1]}" >&2
  echo "round $round: haproxy ${R_HAP[-1]}" >&2
  echo "round $round: netd ${R_NETD[-1]}" >&2
done
median_json() { python3 -c '
import json, statistics, sys
runs = [json.loads(a) for a in sys.argv[1:]]
out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
out["errors"] = sum(r["errors"] for r in runs)  # errors: all rounds
print(json.dumps(out))' "$@"; }
R_DIRECT=$(median_json "${R_DIRECT[@]}"); R_HAP=$(median_json "${R_HAP[@]}"); R_NETD=$(median_json "${R_NETD[@]}")

echo "== latency at light load (1 client, ${SECS}s)" >&2
# With 50 clients the cores are saturated and each exchange's latency is
# mostly its wait for a core: clients / rate (Little's law), so there the
# latency rows follow the rate. One client leaves the cores mostly idle,
# and the latency a proxy adds is its own work on the path.
light() { "$LOAD" rate "127.0.0.1:$1" --conns 1 --secs "$SECS"; }
L_DIRECT=(); L_HAP=(); L_NETD=()
for round in $(seq "$ROUNDS"); do
  L_DIRECT+=("$(light "$ECHO")")
  if [ $((round % 2)) -eq 1 ]; then
    L_HAP+=("$(light "$HAP_ECHO")"); L_NETD+=("$(light "$NETD_ECHO")")
  else
    L_NETD+=("$(light "$NETD_ECHO")"); L_HAP+=("$(light "$HAP_ECHO")")
  fi
  echo "round $round: direct ${L_DIRECT[-1]} haproxy ${L_HAP[-1]} netd ${L_NETD[-1]}" >&2
done
L_DIRECT=$(median_json "${L_DIRECT[@]}"); L_HAP=$(median_json "${L_HAP[@]}"); L_NETD=$(median_json "${L_NETD[@]}")

echo "== HTTP, a new connection per request (wrk -H 'Connection: close', $CONNS connections, ${SECS}s)" >&2
# requests/s (wrk's own figure) and, through a proxy, its CPU µs per request
wrk_close() { # port [pid]
  local before after out
  [ -n "${2:-}" ] && before=$(cpu_ticks "$2")
  out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" -H 'Connection: close' "http://127.0.0.1:$1/x")
  [ -n "${2:-}" ] && after=$(cpu_ticks "$2")
  python3 -c "
import re, sys
out, b, a, tck = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rps = float(re.search(r'Requests/sec:\s+([0-9.]+)', out).group(1))
total = int(re.search(r'([0-9]+) requests in', out).group(1))
m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', out)
errors = sum(map(int, m.groups())) if m else 0
cpu = (int(a) - int(b)) * 1e6 / tck / max(total, 1) if b else 0
print(f'{{\"rate\": {rps}, \"cpu_us\": {cpu}, \"errors\": {errors}}}')" "$out" "${before:-}" "${after:-}" "$HZ"
}
W_DIRECT=(); W_HAP=(); W_NETD=()
for round in $(seq "$ROUNDS"); do
  W_DIRECT+=("$(wrk_close "$NGINX")")
  if [ $((round % 2)) -eq 1 ]; then
    W_HAP+=("$(wrk_close "$HAP_NGINX" "$HAP_PID")"); W_NETD+=("$(wrk_close "$NETD_NGINX" "$NETD_PID")")
  else
    W_NETD+=("$(wrk_close "$NETD_NGINX" "$NETD_PID")"); W_HAP+=("$(wrk_close "$HAP_NGINX" "$HAP_PID")")
  fi
  echo "round $round: direct ${W_DIRECT[-1]} haproxy ${W_HAP[-1]} netd ${W_NETD[-1]}" >&2
done
W_DIRECT=$(median_json "${W_DIRECT[@]}"); W_HAP=$(median_json "${W_HAP[@]}"); W_NETD=$(median_json "${W_NETD[@]}")

echo "== memory per idle connection ($IDLE)" >&2
idle_mem() { # pid port -> bytes per connection
  local before after
  before=$(rss_kb "$1")
  coproc HOLD { "$LOAD" idle "127.0.0.1:$2" --conns "$IDLE" --secs 120; }
  read -r line <&"${HOLD[0]}"
  [ "$line" = "ready $IDLE" ] || { echo "only got '$line' of $IDLE idle connections" >&2; exit 1; }
  sleep 1
  after=$(rss_kb "$1")
  exec {HOLD[1]}>&-
  wait "$HOLD_PID" 2>/dev/null || true
  echo $(( (after - before) * 1024 / IDLE ))
}
M_HAP=$(idle_mem "$HAP_PID" "$HAP_ECHO"); sleep 1
M_NETD=$(idle_mem "$NETD_PID" "$NETD_ECHO")
echo "haproxy $M_HAP B/conn  netd $M_NETD B/conn" >&2

python3 - "$T_DIRECT" "$T_HAP" "$T_NETD" "$R_DIRECT" "$R_HAP" "$R_NETD" "$M_HAP" "$M_NETD" "$SECS" "$CONNS" "$IDLE" "$ROUNDS" "$W_DIRECT" "$W_HAP" "$W_NETD" "$L_DIRECT" "$L_HAP" "$L_NETD" <<'PY'
import json, sys
td, th, tn = map(float, sys.argv[1:4])
rd, rh, rn = (json.loads(x) for x in sys.argv[4:7])
mh, mn = int(sys.argv[7]), int(sys.argv[8])
secs, conns, idle, rounds = sys.argv[9:13]
wd, wh, wn = (json.loads(x) for x in sys.argv[13:16])
ld, lh, ln = (json.loads(x) for x in sys.argv[16:19])
def ratio(a, b): return f"{a / b:.2f}" if b else "-"
print(f"TCP proxy: netd vs HAProxy, same upstream and clients, loopback ({secs}s runs)")
print(f"  bulk:   iperf3 -c 127.0.0.1 -p PROXY -t SECS -J   (iperf3 -s behind each proxy; median of {rounds} rounds)")
print(f"  rate:   conn_load rate 127.0.0.1:PROXY --conns {conns} --secs {secs}   (netd tcp-echo behind each proxy;")
print(f"          median of {rounds} rounds, the proxies' order alternating; errors summed)")
print(f"  http:   wrk -t2 -c{conns} -d{secs}s -H 'Connection: close' http://127.0.0.1:PROXY/x   (nginx, 64 B file,")
print(f"          behind each proxy; median of {rounds} rounds, alternating)")
print(f"  memory: VmRSS of the proxy before/after conn_load idle 127.0.0.1:PROXY --conns {idle}")
print("  netd: netctl start proxy P --listen ... --upstream ... ; HAProxy 2.6: mode tcp, nbthread = cores")
print("  (p99 added = proxied p99 - direct p99; negative when the direct run had the worse tail)")
print("| metric | direct | HAProxy | netd | netd/HAProxy |")
print("| --- | --- | --- | --- | --- |")
print(f"| bulk stream, Gbit/s (iperf3) | {td:.2f} | {th:.2f} | {tn:.2f} | {ratio(tn, th)} |")
print(f"| bulk through the proxy / direct | - | {ratio(th, td)} | {ratio(tn, td)} | |")
print(f"| new connections/s ({conns} clients, 64 B each way) | {rd['rate']:.0f} | {rh['rate']:.0f} | {rn['rate']:.0f} | {ratio(rn['rate'], rh['rate'])} |")
print(f"| proxy CPU per connection (user + system), µs | - | {rh['cpu_us']:.1f} | {rn['cpu_us']:.1f} | {ratio(rn['cpu_us'], rh['cpu_us'])} |")
print(f"| of which user, µs | - | {rh['user_us']:.1f} | {rn['user_us']:.1f} | {ratio(rn['user_us'], rh['user_us'])} |")
print(f"| of which system (the kernel's TCP work), µs | - | {rh['sys_us']:.1f} | {rn['sys_us']:.1f} | {ratio(rn['sys_us'], rh['sys_us'])} |")
print(f"| whole machine's CPU per connection (clients, upstream, proxy), µs | {rd['machine_us']:.1f} | {rh['machine_us']:.1f} | {rn['machine_us']:.1f} | {ratio(rn['machine_us'], rh['machine_us'])} |")
# The run is CPU-bound (clients, upstream and proxy share the cores), so the
# rate is the cores over the machine's CPU per connection: 1.2x HAProxy's
# rate needs netd's CPU per connection at most HAProxy's machine figure / 1.2
# minus what everything but netd spends in netd's run.
need = rh['machine_us'] / 1.2 - (rn['machine_us'] - rn['cpu_us'])
print(f"| netd CPU per connection that 1.2x HAProxy's rate would need, µs | - | - | {need:.1f} | {ratio(need, rh['cpu_us'])} of HAProxy's total, {ratio(need, rh['sys_us'])} of its system time |")
print(f"| exchange latency p50, µs | {rd['p50_us']:.0f} | {rh['p50_us']:.0f} | {rn['p50_us']:.0f} | {ratio(rn['p50_us'], rh['p50_us'])} |")
print(f"| exchange latency p99, µs | {rd['p99_us']:.0f} | {rh['p99_us']:.0f} | {rn['p99_us']:.0f} | {ratio(rn['p99_us'], rh['p99_us'])} |")
ah, an = rh['p99_us'] - rd['p99_us'], rn['p99_us'] - rd['p99_us']
print(f"| p99 latency added by the proxy, µs | - | {ah:.0f} | {an:.0f} | {ratio(an, ah)} |")
print(f"| light load (1 client): exchanges/s | {ld['rate']:.0f} | {lh['rate']:.0f} | {ln['rate']:.0f} | {ratio(ln['rate'], lh['rate'])} |")
print(f"| light load: exchange latency p50, µs | {ld['p50_us']:.0f} | {lh['p50_us']:.0f} | {ln['p50_us']:.0f} | {ratio(ln['p50_us'], lh['p50_us'])} |")
print(f"| light load: exchange latency p99, µs | {ld['p99_us']:.0f} | {lh['p99_us']:.0f} | {ln['p99_us']:.0f} | {ratio(ln['p99_us'], lh['p99_us'])} |")
lah, lan = lh['p99_us'] - ld['p99_us'], ln['p99_us'] - ld['p99_us']
print(f"| light load: p99 latency added by the proxy, µs | - | {lah:.0f} | {lan:.0f} | {ratio(lan, lah)} |")
print(f"| HTTP requests/s, new connection each (wrk, nginx behind) | {wd['rate']:.0f} | {wh['rate']:.0f} | {wn['rate']:.0f} | {ratio(wn['rate'], wh['rate'])} |")
print(f"| proxy CPU per HTTP request (user + system), µs | - | {wh['cpu_us']:.1f} | {wn['cpu_us']:.1f} | {ratio(wn['cpu_us'], wh['cpu_us'])} |")
print(f"| RSS per idle proxied connection, bytes ({idle} open) | - | {mh} | {mn} | {ratio(mn, mh)} |")
print(f"| client errors (rate runs) | {rd['errors']} | {rh['errors']} | {rn['errors']} | |")
print(f"| wrk socket errors (HTTP runs) | {wd['errors']} | {wh['errors']} | {wn['errors']} | |")
PY
