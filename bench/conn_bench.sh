#!/usr/bin/env bash
# New proxied connections: netd's TCP proxy with a SO_REUSEPORT socket per
# worker (the default), the same binary with NETD_REUSEPORT=off (one
# listening socket shared by the workers as dups, as before issue #29),
# and HAProxy (Debian's haproxy, mode tcp, nbthread = cores), side by side
# in one run, in front of the same upstream (a netd tcp-echo in a process
# of its own), with the same clients: bench/conn_load.rs, CONNS concurrent
# clients doing connect, 64 B request, 64 B reply, close. The proxies'
# order rotates each round; every figure is the median over the rounds.
# Per proxy: connections/s, its CPU time per connection (user + system,
# from /proc/PID/stat), and the p99 it adds (proxied p99 - direct p99).
# The same commands as bench/proxy_bench.sh's rate rows.
#
#   bench/conn_bench.sh        # SECS=4 CONNS=50 ROUNDS=6 by default
#   NETD_BEFORE=PATH bench/conn_bench.sh   # a fourth column: another netd binary
. "$(dirname "$0")/lib.sh"
SECS=${SECS:-4}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-6}

need haproxy
build_release --bin netd --bin netctl --example conn_load
LOAD=$EXAMPLES/conn_load
ulimit -n "$(ulimit -Hn)"

quiet_config "$work/quiet.toml"
start_netd up "$work/quiet.toml"; UP_PID=$netd_pid
ECHO=$(free_port)
ctl_at up start tcp-echo up --listen "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null

read -r P_GROUP P_OFF P_HAP P_BEFORE < <(free_ports 4)
start_netd group "$work/quiet.toml"; GROUP_PID=$netd_pid
ctl_at group start proxy p --listen "127.0.0.1:$P_GROUP" --upstream "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
start_netd off "$work/quiet.toml" env NETD_REUSEPORT=off; OFF_PID=$netd_pid
ctl_at off start proxy p --listen "127.0.0.1:$P_OFF" --upstream "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
NAMES=(group off haproxy)
PORTS=("$P_GROUP" "$P_OFF" "$P_HAP")
PIDS=("$GROUP_PID" "$OFF_PID")
if [ -n "${NETD_BEFORE:-}" ]; then
  NETD_SAVED=$NETD; NETD=$NETD_BEFORE
  start_netd before "$work/quiet.toml"; BEFORE_PID=$netd_pid
  NETD=$NETD_SAVED
  ctl_at before start proxy p --listen "127.0.0.1:$P_BEFORE" --upstream "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
fi
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
  bind 127.0.0.1:$P_HAP
  default_backend be_echo
backend be_echo
  server s1 127.0.0.1:$ECHO
CFG
haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" & HAP_PID=$!; pids+=($HAP_PID)
PIDS+=("$HAP_PID")
if [ -n "${NETD_BEFORE:-}" ]; then NAMES+=(before); PORTS+=("$P_BEFORE"); PIDS+=("$BEFORE_PID"); fi
for p in "${PORTS[@]}"; do wait_port "$p"; done
echo "listening sockets: group $(ss -Hltn "sport = :$P_GROUP" | wc -l), off $(ss -Hltn "sport = :$P_OFF" | wc -l)" >&2

# the process's user and system ticks, then the whole machine's busy ticks
cpu_split() { echo "$(awk '{print $14, $15}' "/proc/$1/stat") $(awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat)"; }
rate_cpu() { # pid port
  local before out after
  before=$(cpu_split "$1"); out=$("$LOAD" rate "127.0.0.1:$2" --conns "$CONNS" --secs "$SECS"); after=$(cpu_split "$1")
  python3 -c "
import json, sys
r = json.loads(sys.argv[1])
b, a = (list(map(int, x.split())) for x in sys.argv[2:4])
per = 1e6 / int(sys.argv[4]) / max(r['exchanges'], 1)
r['user_us'], r['sys_us'], r['machine_us'] = ((a[i] - b[i]) * per for i in range(3))
r['cpu_us'] = r['user_us'] + r['sys_us']
print(json.dumps(r))" "$out" "$before" "$after" "$HZ"
}

n=${#NAMES[@]}
field_rate() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])["exchanges"])' "$1"; }
declare -A RUNS
for round in $(seq "$ROUNDS"); do
  RUNS[direct]+="$(rate_cpu "$UP_PID" "$ECHO")"$'\n'
  for k in $(seq 0 $((n - 1))); do
    i=$(( (k + round) % n ))
    RUNS[${NAMES[$i]}]+="$(rate_cpu "${PIDS[$i]}" "${PORTS[$i]}")"$'\n'
  done
  for x in direct "${NAMES[@]}"; do
    grep . <<<"${RUNS[$x]}" | tail -n 1 | python3 -c 'import json, sys
r = json.load(sys.stdin)
print("round %s: %-8s %6.0f/s %6.1f us/conn p99 %6.0f us" % (sys.argv[1], sys.argv[2], r["rate"], r["cpu_us"], r["p99_us"]))' "$round" "$x" >&2
  done
done
# Syscalls per connection in each proxy, counted by the kernel over one
# more rate run (perf stat on the proxy's pid): all of them, accept4 (one
# per connection, more when a woken thread finds the queue empty),
# epoll_wait, and context switches.
SYSCALLS=""
if command -v perf >/dev/null; then
  for i in $(seq 0 $((n - 1))); do
    out=$(perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_accept4,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,context-switches \
      -p "${PIDS[$i]}" -- "$LOAD" rate "127.0.0.1:${PORTS[$i]}" --conns "$CONNS" --secs "$SECS" 2>"$work/perf.txt")
    SYSCALLS+="${NAMES[$i]} $(field_rate "$out") $(awk -F, '{printf "%s ", $1}' "$work/perf.txt")"$'\n'
  done
fi

args=()
for x in direct "${NAMES[@]}"; do args+=("$x" "${RUNS[$x]}"); done
python3 - "$SECS" "$CONNS" "$ROUNDS" "$(cat /proc/loadavg)" "$SYSCALLS" "${args[@]}" <<'PY'
import json, statistics, sys
secs, conns, rounds, load, syscalls = sys.argv[1:6]
rest = sys.argv[6:]
med = {}
for name, lines in zip(rest[0::2], rest[1::2]):
    runs = [json.loads(l) for l in lines.splitlines() if l.strip()]
    m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    m["errors"] = sum(r["errors"] for r in runs)
    med[name] = m
d, h = med["direct"], med["haproxy"]
def ratio(a, b): return f"{a / b:.2f}" if b else "-"
cols = [c for c in ("group", "off", "before") if c in med]
label = {"group": "netd, a socket per worker", "off": "netd, NETD_REUSEPORT=off", "before": "netd before"}
print(f"New proxied connections: conn_load rate 127.0.0.1:PROXY --conns {conns} --secs {secs}, median of {rounds} rounds (order rotating)")
print(f"  loadavg at the end: {load}")
print("| metric | direct | HAProxy | " + " | ".join(label[c] for c in cols) + " |")
print("| --- | --- | --- | " + " | ".join("---" for _ in cols) + " |")
def row(name, key, fmt, direct=True):
    cells = [fmt.format(d[key]) if direct else "-", fmt.format(h[key])]
    cells += [f"{fmt.format(med[c][key])} ({ratio(med[c][key], h[key])}×)" for c in cols]
    print(f"| {name} | " + " | ".join(cells) + " |")
row("connections/s", "rate", "{:.0f}")
row("proxy CPU per connection, µs", "cpu_us", "{:.1f}", direct=False)
row("of which user, µs", "user_us", "{:.1f}", direct=False)
row("of which system, µs", "sys_us", "{:.1f}", direct=False)
row("whole machine's CPU per connection, µs", "machine_us", "{:.1f}")
row("exchange latency p99, µs", "p99_us", "{:.0f}")
ah = h["p99_us"] - d["p99_us"]
print("| p99 added by the proxy, µs | - | " + f"{ah:.0f} | " + " | ".join(
    f"{med[c]['p99_us'] - d['p99_us']:.0f} ({ratio(med[c]['p99_us'] - d['p99_us'], ah)}×)" for c in cols) + " |")
print("| client errors | " + f"{d['errors']} | {h['errors']} | " + " | ".join(str(med[c]["errors"]) for c in cols) + " |")
if syscalls.strip():
    print()
    print("Per connection in the proxy (perf stat -p PID over one more rate run):")
    print("| proxy | syscalls | accept4 | epoll_wait | context switches |")
    print("| --- | --- | --- | --- | --- |")
    for line in syscalls.strip().splitlines():
        f = line.split()
        name, ex = f[0], float(f[1])
        c = [float(x) if x.replace(".", "").isdigit() else 0.0 for x in f[2:7]]
        print(f"| {label.get(name, 'HAProxy')} | {c[0] / ex:.2f} | {c[1] / ex:.2f} | {(c[2] + c[3]) / ex:.2f} | {c[4] / ex:.2f} |")
PY
