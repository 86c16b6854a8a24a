#!/usr/bin/env bash
# "Nothing else slower": two netd builds side by side in one run, loopback
# only, on the paths the earlier rounds measured, with the loads the other
# scripts use (no new load tool):
#   bulk         one stream through a TCP proxy listener
#                (iperf3 -c -t SECS, iperf3 -s behind; as proxy_bench.sh)
#   conn         the fault-free proxy path: new connections/s through a
#                proxy listener without faults (conn_load rate --conns 50,
#                a netd tcp-echo behind; fault_bench.sh's "none")
#   fault0_bulk  the same stream through a proxy listener that has a fault
#   fault0_conn  at toxicity 0 (`latency 0ms`, both directions: configured,
#                decided per connection, acting on none; what `netctl top`'s
#                fault switch leaves)
#   http         wrk keep-alive against the http kind, no access log (log
#                level warn, as http_bench.sh)
#   access_log   the same against an http listener with its access log on,
#                written to a file (access_log_bench.sh's "netd, log on")
#   http_proxy   wrk keep-alive through an http-proxy listener to nginx
#                (http_proxy_bench.sh)
# Each build runs its own netd processes (its own netctl drives them); the
# upstreams (iperf3, a netd tcp-echo, nginx) and the clients are shared.
# For each metric ROUNDS rounds of A and B, the order swapped every round
# (A B, B A, ...), every run bounded by SECS (and a timeout); medians,
# B/A, the median of the rounds' own B/A, the spread of each side's
# rounds and the load average, and which metrics are outside ±TOL%. A
# metric outside it is measured once more (RERUN=0: not) before the
# verdict: "slower" only when both runs say so.
#
#   bench/regress.sh A B
#     A, B: a directory holding a release netd and netctl (and optionally
#     conn_load), or a git revision: built from `git archive REV` in a
#     directory of its own with `cargo build --release` (both revisions in
#     one CARGO_TARGET_DIR, so the dependencies build once), removed at
#     exit unless KEEP=DIR (then the binaries and the target directory are
#     kept there; a later run reuses them; delete DIR when done).
#   bench/regress.sh 8362439 main
#   KEEP=/tmp/netd-regress METRICS="bulk conn fault0_conn" bench/regress.sh main reuse
#
# Knobs: ROUNDS=5 (at least 3) SECS=5 CONNS=50 HTTP_CONNS=64 THREADS=2
# TOL=3 RERUN=1 METRICS="bulk conn fault0_bulk fault0_conn http access_log
# http_proxy" KEEP=; ENV_A, ENV_B: environment for that side's netd (e.g.
# ENV_A=NETD_REUSEPORT=off bench/regress.sh reuse reuse: one binary, a
# switch off and on).
. "$(dirname "$0")/lib.sh"
SECS=${SECS:-5}
CONNS=${CONNS:-50}
HTTP_CONNS=${HTTP_CONNS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-5}
TOL=${TOL:-3}
RERUN=${RERUN:-1}
METRICS=${METRICS:-bulk conn fault0_bulk fault0_conn http access_log http_proxy}

if [ $# -ne 2 ]; then
  sed -n '2,/^\. /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi
[ "$ROUNDS" -ge 3 ] || { echo "ROUNDS=$ROUNDS: at least 3 rounds per build" >&2; exit 2; }
for m in $METRICS; do
  case $m in
    bulk | conn | fault0_bulk | fault0_conn | http | access_log | http_proxy) ;;
    *) echo "METRICS: unknown metric '$m'" >&2; exit 2 ;;
  esac
done
need iperf3 wrk nginx curl

# --- the two builds ---------------------------------------------------------
BUILD=${KEEP:-$work/build}
mkdir -p "$BUILD"
declare -A DIR LABEL
# Sets DIR[$1] to a directory with netd and netctl for spec $2.
resolve() {
  local side=$1 spec=$2 sha src
  if [ -d "$spec" ]; then
    [ -x "$spec/netd" ] && [ -x "$spec/netctl" ] || { echo "$spec: no netd and netctl in it" >&2; exit 2; }
    DIR[$side]=$(cd "$spec" && pwd); LABEL[$side]=$spec
    return
  fi
  sha=$(git rev-parse --short=12 --verify -q "$spec^{commit}") || { echo "$spec: neither a directory nor a git revision" >&2; exit 2; }
  DIR[$side]=$BUILD/bin-$sha; LABEL[$side]="$spec ($sha)"
  [ -x "${DIR[$side]}/netd" ] && { echo "$spec: using the build in ${DIR[$side]}" >&2; return; }
  src=$BUILD/src-$sha
  rm -rf "$src" "${DIR[$side]}.tmp"; mkdir -p "$src" "${DIR[$side]}.tmp"
  git archive "$sha" | tar -xm -C "$src"  # -m: files dated now, so cargo rebuilds (and reruns build.rs) over the other revision's output
  echo "building $spec ($sha) in $src (release; CARGO_TARGET_DIR=$BUILD/target)" >&2
  (cd "$src" && CARGO_TARGET_DIR=$BUILD/target cargo build -q --release --bin netd --bin netctl --example conn_load)
  cp "$BUILD/target/release/netd" "$BUILD/target/release/netctl" "${DIR[$side]}.tmp/"
  cp "$BUILD/target/release/examples/conn_load" "${DIR[$side]}.tmp/" 2>/dev/null || true
  mv "${DIR[$side]}.tmp" "${DIR[$side]}"
  rm -rf "$src"
}
resolve A "$1"
resolve B "$2"
declare -A ENV=([A]=${ENV_A:-} [B]=${ENV_B:-})
for side in A B; do [ -z "${ENV[$side]}" ] || LABEL[$side]="${LABEL[$side]} with ${ENV[$side]}"; done
# ~2-3 GB; the binaries are copied out. KEEP keeps it too, for the next
# revision's build (delete KEEP's directory when done).
[ -n "${KEEP:-}" ] || rm -rf "$BUILD/target"
# The load tool: B's, else A's, else built from this tree.
if [ -x "${DIR[B]}/conn_load" ]; then LOAD=${DIR[B]}/conn_load
elif [ -x "${DIR[A]}/conn_load" ]; then LOAD=${DIR[A]}/conn_load
else build_release --example conn_load; LOAD=$EXAMPLES/conn_load
fi
ulimit -n "$(ulimit -Hn)"
chmod 755 "$work"  # nginx workers (www-data) read under it

# --- upstreams (shared) -----------------------------------------------------
quiet_config "$work/quiet.toml"
NETD=${DIR[B]}/netd NETCTL=${DIR[B]}/netctl start_netd up "$work/quiet.toml"
read -r ECHO IPERF UP < <(free_ports 3)
NETCTL=${DIR[B]}/netctl ctl_at up start tcp-echo up --listen "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
iperf3 -s -p "$IPERF" -D --pidfile "$work/iperf.pid"
for _ in $(seq 100); do [ -s "$work/iperf.pid" ] && break; sleep 0.05; done
pids+=("$(cat "$work/iperf.pid")")
nginx_json_upstream "$UP"
wait_port "$ECHO"; wait_port "$UP"  # (a probe would be a failed test to iperf3)

# --- each build's daemons ---------------------------------------------------
# px-SIDE (log level warn, as the other scripts): the proxies, the http
# listener with its log off and the http-proxy; log-SIDE: one http listener
# logging every request to a file.
declare -A PX_PID LOG_PID PE PI FE FI HTTP HLOG HP
ctl() { local side=$1; shift; NETCTL=${DIR[$side]}/netctl ctl_at "$@"; }
for side in A B; do
  read -r PE[$side] PI[$side] FE[$side] FI[$side] HTTP[$side] HLOG[$side] HP[$side] < <(free_ports 7)
  # shellcheck disable=SC2086  # ENV_A/ENV_B: words for env(1)
  NETD=${DIR[$side]}/netd start_netd "px-$side" "$work/quiet.toml" env ${ENV[$side]}; PX_PID[$side]=$netd_pid
  ctl "$side" "px-$side" start proxy pe --listen "127.0.0.1:${PE[$side]}" --upstream "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
  ctl "$side" "px-$side" start proxy pi --listen "127.0.0.1:${PI[$side]}" --upstream "127.0.0.1:$IPERF" >/dev/null
  ctl "$side" "px-$side" start proxy fe --listen "127.0.0.1:${FE[$side]}" --upstream "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
  ctl "$side" "px-$side" start proxy fi --listen "127.0.0.1:${FI[$side]}" --upstream "127.0.0.1:$IPERF" >/dev/null
  for l in fe fi; do
    ctl "$side" "px-$side" fault add "$l" off --type latency --latency 0ms --direction both --toxicity 0 >/dev/null
  done
  ctl "$side" "px-$side" start http h --listen "127.0.0.1:${HTTP[$side]}" --max-connections 4096 >/dev/null
  ctl "$side" "px-$side" start http-proxy hp --listen "127.0.0.1:${HP[$side]}" -u "127.0.0.1:$UP" --max-connections 4096 >/dev/null
  mkdir -p "$work/logs-$side"
  printf '[log]\nlevel = "info"\n[access_log]\npath = "%s"\n' "$work/logs-$side/access.log" > "$work/log-$side.toml"
  # shellcheck disable=SC2086
  NETD=${DIR[$side]}/netd start_netd "log-$side" "$work/log-$side.toml" env ${ENV[$side]}; LOG_PID[$side]=$netd_pid
  ctl "$side" "log-$side" start http hl --listen "127.0.0.1:${HLOG[$side]}" --max-connections 4096 >/dev/null
  for p in "${PE[$side]}" "${PI[$side]}" "${FE[$side]}" "${FI[$side]}" "${HTTP[$side]}" "${HLOG[$side]}" "${HP[$side]}"; do wait_port "$p"; done
  body=$(curl -s "http://127.0.0.1:${HP[$side]}/api/items")
  [ "$body" = '{"ok":true}' ] || bench_gave_up "$side's http-proxy answers '$body', not the upstream's JSON"
done

# --- one measurement --------------------------------------------------------
# measure METRIC SIDE -> "value cpu errors extra": the rate, the netd
# process's CPU (user + system) per unit of it, errors, and for the access
# log the lines logged per request (else -).
LIMIT=$((SECS + 30))  # no run may hang the script
iperf_cpu() { # port pid -> Gbit/s, CPU s per GB
  local before out after
  before=$(cpu_ticks "$2")
  out=$(timeout "$LIMIT" iperf3 -c 127.0.0.1 -p "$1" -t "$SECS" -J)
  after=$(cpu_ticks "$2")
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])["end"]["sum_received"]
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(r["bits_per_second"] / 1e9, cpu / max(r["bytes"] / 1e9, 1e-9), 0, "-")' "$out" "$before" "$after" "$HZ"
}
rate_cpu() { # port pid -> connections/s, CPU µs per connection
  local before out after
  before=$(cpu_ticks "$2")
  out=$(timeout "$LIMIT" "$LOAD" rate "127.0.0.1:$1" --conns "$CONNS" --secs "$SECS")
  after=$(cpu_ticks "$2")
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(r["rate"], cpu * 1e6 / max(r["exchanges"], 1), r["errors"], "-")' "$out" "$before" "$after" "$HZ"
}
wrk_cpu() { # url pid conns [log] -> requests/s, CPU µs per request
  local before after lines=-
  before=$(cpu_ticks "$2")
  timeout "$LIMIT" wrk -t"$THREADS" -c"$3" -d"${SECS}s" "$1" > "$work/wrk.out"
  after=$(cpu_ticks "$2")
  if [ -n "${4:-}" ]; then
    sleep 1.5  # the writer flushes within a second
    lines=$(wc -l < "$4" 2>/dev/null || echo 0)
    : > "$4"
  fi
  python3 - "$work/wrk.out" "$before" "$after" "$HZ" "$lines" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
n = int(re.search(r"(\d+) requests in", t).group(1))
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
errors = (sum(map(int, m.groups())) if m else 0) + (int(non2xx.group(1)) if non2xx else 0)
cpu = (int(sys.argv[3]) - int(sys.argv[2])) * 1e6 / int(sys.argv[4]) / max(n, 1)
lines = sys.argv[5]
print(rps, cpu, errors, f"{int(lines) / max(n, 1):.3f}" if lines != "-" else "-")
PY
}
measure() {
  local s=$2
  case $1 in
    bulk) iperf_cpu "${PI[$s]}" "${PX_PID[$s]}" ;;
    conn) rate_cpu "${PE[$s]}" "${PX_PID[$s]}" ;;
    fault0_bulk) iperf_cpu "${FI[$s]}" "${PX_PID[$s]}" ;;
    fault0_conn) rate_cpu "${FE[$s]}" "${PX_PID[$s]}" ;;
    http) wrk_cpu "http://127.0.0.1:${HTTP[$s]}/a/b?k=v1&k=v2" "${PX_PID[$s]}" "$HTTP_CONNS" ;;
    access_log) wrk_cpu "http://127.0.0.1:${HLOG[$s]}/a/b?k=v1&k=v2" "${LOG_PID[$s]}" "$HTTP_CONNS" "$work/logs-$s/access.log" ;;
    http_proxy) wrk_cpu "http://127.0.0.1:${HP[$s]}/api/items" "${PX_PID[$s]}" "$CONNS" ;;
  esac
}

# --- the rounds ---------------------------------------------------------------
load() { cut -d' ' -f1 /proc/loadavg; }
: > "$work/results"
: > "$work/loads"
# run_pass PASS METRIC...: ROUNDS rounds of each metric, A and B in turn.
run_pass() {
  local pass=$1 m r s l0 res order
  shift
  for m in "$@"; do
    l0=$(load)
    for r in $(seq "$ROUNDS"); do
      if [ $((r % 2)) -eq 1 ]; then order=(A B); else order=(B A); fi
      for s in "${order[@]}"; do
        res=$(measure "$m" "$s")
        echo "$pass $m $r $s $res" >> "$work/results"
        echo "pass $pass $m round $r $s: $res" >&2
      done
    done
    echo "$pass $m $l0 $(load)" >> "$work/loads"
  done
}
summary() { # what=verdicts|table
  python3 - "$1" "$work/results" "$work/loads" "$TOL" "${LABEL[A]}" "${LABEL[B]}" <<'PY'
import math, statistics, sys
what, results, loads, tol, la, lb = sys.argv[1:7]
tol = float(tol) / 100
rows = [l.split() for l in open(results)]
load = {(l.split()[0], l.split()[1]): l.split()[2:] for l in open(loads)}
UNITS = {
    "bulk": ("proxy bulk, one stream, Gbit/s", "proxy CPU per GB, s"),
    "conn": ("fault-free proxy, new connections/s", "proxy CPU per connection, µs"),
    "fault0_bulk": ("proxy with a toxicity-0 fault, bulk, Gbit/s", "proxy CPU per GB, s"),
    "fault0_conn": ("proxy with a toxicity-0 fault, new connections/s", "proxy CPU per connection, µs"),
    "http": ("HTTP (http kind, log off), requests/s", "netd CPU per request, µs"),
    "access_log": ("HTTP with the access log on, requests/s", "netd CPU per request, µs"),
    "http_proxy": ("http-proxy, requests/s", "netd CPU per request, µs"),
}
passes, metrics = [], []
for r in rows:
    if r[0] not in passes: passes.append(r[0])
    if r[1] not in metrics: metrics.append(r[1])
def get(p, m, side, i):
    return {int(r[2]): float(r[4 + i]) for r in rows if r[0] == p and r[1] == m and r[3] == side}
def stats(p, m, i):
    a, b = get(p, m, "A", i), get(p, m, "B", i)
    if not a or not b: return None
    ma, mb = statistics.median(a.values()), statistics.median(b.values())
    per = [b[k] / a[k] for k in a if k in b and a[k]]
    spread = lambda v: (max(v) - min(v)) / statistics.median(v) * 100 if statistics.median(v) else 0
    return dict(a=ma, b=mb, ratio=mb / ma if ma else float("nan"), per=statistics.median(per),
                lo=min(per), hi=max(per), sa=spread(list(a.values())), sb=spread(list(b.values())), n=len(per))
def outside(s): return abs(s["ratio"] - 1) > tol
if what == "verdicts":  # the metrics whose rate is outside ±TOL in pass 1
    print(" ".join(m for m in metrics if (s := stats("1", m, 0)) and outside(s)))
    sys.exit()
print(f"A = {la}, B = {lb}; ROUNDS rounds each, order swapped every round; medians")
print(f"| metric | pass | A | B | B/A | per round B/A: median (min-max) | spread of rounds A / B | load avg | ±{tol*100:g}% |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
fmt = lambda x: f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"
for m in metrics:
    for i in (0, 1):
        for p in passes:
            s = stats(p, m, i)
            if not s: continue
            flag = ("outside" if outside(s) else "within")
            l = load.get((p, m), ["?", "?"])
            print(f"| {UNITS[m][i]} | {p} | {fmt(s['a'])} | {fmt(s['b'])} | {s['ratio']:.3f} | {s['per']:.3f} ({s['lo']:.2f}-{s['hi']:.2f}) | {s['sa']:.0f}% / {s['sb']:.0f}% | {l[0]} → {l[1]} | {flag} |")
print()
errs = {(m, side): sum(int(float(r[6])) for r in rows if r[1] == m and r[3] == side) for m in metrics for side in "AB"}
print("errors (all rounds, A / B): " + ", ".join(f"{m} {errs[(m, 'A')]} / {errs[(m, 'B')]}" for m in metrics))
logged = [r for r in rows if r[1] == "access_log"]
if logged:
    lines = {side: [float(r[7]) for r in logged if r[3] == side] for side in "AB"}
    print("access log lines per request (min-max of the rounds), A / B: " + " / ".join(f"{min(v):.3f}-{max(v):.3f}" for v in lines.values()))
print()
# The verdict pools every round of a metric (both passes): the rounds'
# own B/A (A and B seconds apart, so the machine's drift cancels), a 95%
# t-interval on their logarithms. Slower or faster only when the whole
# interval is beyond the tolerance; within it only when the whole
# interval is inside; else the noise is larger than the question.
T95 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13]
def interval(m, i=0):
    logs = []
    for p in passes:
        a, b = get(p, m, "A", i), get(p, m, "B", i)
        logs += [math.log(b[k] / a[k]) for k in a if k in b and a[k] > 0 and b[k] > 0]
    n = len(logs)
    mean = statistics.mean(logs)
    half = (T95[n - 2] if n - 2 < len(T95) else 2.0) * statistics.stdev(logs) / math.sqrt(n)
    below = sum(1 for x in logs if x < 0)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half), below, n
print("verdict per metric (the rate; all rounds pooled: geometric mean of the rounds' B/A, 95% interval;")
print("its CPU per unit below it, where B/A above 1 is B costlier):")
for m in metrics:
    g, lo, hi, below, n = interval(m)
    s1 = stats("1", m, 0)
    runs = " / ".join(f"{stats(p, m, 0)['ratio']:.3f}" for p in passes if stats(p, m, 0))
    if hi < 1 - tol: v = f"SLOWER by more than {tol*100:g}%"
    elif lo > 1 + tol: v = f"faster by more than {tol*100:g}%"
    elif lo >= 1 - tol and hi <= 1 + tol: v = f"within ±{tol*100:g}%"
    elif hi < 1: v = f"slower, by less or more than {tol*100:g}% (not resolved)"
    elif lo > 1: v = f"faster, by less or more than {tol*100:g}% (not resolved)"
    else: v = f"no difference shown; the noise (interval) is wider than ±{tol*100:g}%"
    print(f"- {UNITS[m][0]}: {v} — B/A {g:.3f} ({lo:.3f}-{hi:.3f}), B below A in {below} of {n} rounds; ratio of medians per pass {runs}")
    g, lo, hi, below, n = interval(m, 1)
    print(f"  {UNITS[m][1]}: B/A {g:.3f} ({lo:.3f}-{hi:.3f}), B below A in {below} of {n} rounds")
PY
}

echo "A = ${LABEL[A]}: ${DIR[A]}; B = ${LABEL[B]}: ${DIR[B]}; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# shellcheck disable=SC2086
run_pass 1 $METRICS
again=$(summary verdicts)
if [ -n "$again" ] && [ "$RERUN" = 1 ]; then
  echo "outside ±$TOL%: $again; measuring them once more" >&2
  # shellcheck disable=SC2086
  run_pass 2 $again
fi

echo "bench/regress.sh: netd A against netd B, loopback, ${SECS}s runs, $ROUNDS rounds each (A B, B A, ...)"
echo "  bulk: iperf3 -c 127.0.0.1 -p PROXY -t $SECS (iperf3 -s behind); conn: conn_load rate 127.0.0.1:PROXY --conns $CONNS --secs $SECS (netd tcp-echo behind)"
echo "  fault0_*: the same through a proxy with: netctl fault add P off --type latency --latency 0ms --direction both --toxicity 0"
echo "  http / access_log: wrk -t$THREADS -c$HTTP_CONNS -d${SECS}s http://127.0.0.1:PORT/a/b?k=v1&k=v2 (http kind: netd at log level warn / an http listener logging to a file)"
echo "  http_proxy: wrk -t$THREADS -c$CONNS -d${SECS}s http://127.0.0.1:PORT/api/items (http-proxy -u nginx 'return 200')"
echo "  CPU: the netd process's user + system time over the run, per unit"
summary table
