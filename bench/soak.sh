#!/usr/bin/env bash
# Soak: one netd under mixed traffic on every listener kind at once for
# DURATION seconds (default 600), with stalled and slow control-stream
# watchers, checking that nothing grows without bound.
#
# Everything runs inside a network namespace this script creates (and
# deletes on exit): netd, the load and the watchers; all traffic is on that
# namespace's lo (127.0.0.1), where the sniffer captures.
#   listeners: tcp-echo, udp-echo (rate_limit off), proxy -> the tcp-echo,
#              http (HTTP/1 and h2c), sniffer on lo (pcap rotated, 2 x 8 MiB)
#   load:      bench/soak_load.rs, paced and bounded by --secs (see its header)
#   watchers:  `netctl stats --watch -i 100ms`, `netctl events` and `netctl
#              sniff` each writing into a pipe nobody reads (stalled); `stats
#              --watch` and `sniff` read slowly (one line per 200 ms); and
#              every 5 s a listener started and stopped (events) with a short
#              `stats --watch -n 3` (streams opened and closed)
# Every second: netd's VmRSS and thread count (/proc/PID/status), open fds
# (/proc/PID/fd) and the sum of connections_active over its listeners
# (`netctl -o json stats`; a stand-in for tokio tasks, one per connection).
#
# Verdict, per series: mean of the last third of the samples against the mean
# of the middle third (the first third is warm-up). FAIL if
#   last > middle * (1 + TOL) + SLACK
# with RSS: 10% + 4 MiB, fds: 10% + 16, threads: 0% + 2, active connections:
# 25% + 16 (the load runs 3 s past the last sample). Also FAIL if, 5 s after
# the load stops, connections_active is not 0 or fds are more than 16 above
# the first sample (not released).
# Exits 1 on FAIL.
#
#   bench/soak.sh               # DURATION=600 SCALE=1
#   bench/soak.sh --duration 120
. "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-600}
SCALE=${SCALE:-1}
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    *) echo "usage: bench/soak.sh [--duration SECS] [--scale K]" >&2; exit 2 ;;
  esac
done
[ "$DURATION" -ge 30 ] || { echo "DURATION must be at least 30 s" >&2; exit 2; }

need ip=iproute2 python3
build_release --bin netd --bin netctl --example soak_load
LOAD=$EXAMPLES/soak_load

trap 'exit 1' INT TERM
bench_netns "netd-soak-$$"
ctl() { ctl_at netd "$@"; }
LIMIT=$((DURATION + 30))  # upper bound on every background process

# Fixed ports: the namespace is fresh.
mkdir -p "$work/captures"
cat > "$work/netd.toml" <<CFG
capture_dir = "$work/captures"
[log]
level = "warn"
[[listener]]
name = "tcp"
kind = "tcp-echo"
listen = "127.0.0.1:7001"
max_connections = 4096
[[listener]]
name = "udp"
kind = "udp-echo"
listen = "127.0.0.1:7002"
rate_limit = "off"
[[listener]]
name = "proxy"
kind = "proxy"
listen = "127.0.0.1:7003"
upstreams = ["127.0.0.1:7001"]
max_connections = 4096
[[listener]]
name = "http"
kind = "http"
listen = "127.0.0.1:7004"
max_connections = 4096
[[listener]]
name = "sniff"
kind = "sniffer"
interface = "lo"
pcap_path = "soak.pcap"
pcap_max_bytes = 8388608
pcap_max_files = 2
CFG
ulimit -n 65536 2>/dev/null || true
start_netd netd "$work/netd.toml" ip netns exec "$NS"; NETD_PID=$netd_pid

# Watchers. Stalled: the reader holds the pipe open and never reads.
stalled() { # name, netctl args...
  local f="$work/$1.fifo"; shift
  mkfifo "$f"
  timeout "$LIMIT" sleep "$LIMIT" < "$f" & pids+=($!)
  timeout "$LIMIT" "$NETCTL" --control "unix:$work/netd.sock" "$@" > "$f" 2>>"$work/watchers.log" & pids+=($!)
}
slow() { # name, netctl args...
  local f="$work/$1.fifo"; shift
  mkfifo "$f"
  timeout "$LIMIT" bash -c 'while read -r _; do sleep 0.2; done' < "$f" & pids+=($!)
  timeout "$LIMIT" "$NETCTL" --control "unix:$work/netd.sock" "$@" > "$f" 2>>"$work/watchers.log" & pids+=($!)
}
stalled stall-stats stats --watch -i 100ms
stalled stall-events events
stalled stall-sniff sniff sniff
slow slow-stats stats --watch -i 100ms
slow slow-sniff sniff sniff
churn() {
  local end=$((SECONDS + DURATION)) i=0
  while [ $SECONDS -lt $end ]; do
    i=$((i + 1))
    ctl start tcp-echo "churn$i" --listen 127.0.0.1:0 >/dev/null 2>>"$work/watchers.log" || true
    timeout 5 "$NETCTL" --control "unix:$work/netd.sock" stats --watch -i 100ms -n 3 >/dev/null 2>>"$work/watchers.log" || true
    ctl stop "churn$i" >/dev/null 2>>"$work/watchers.log" || true
    sleep 5
  done
}
churn & pids+=($!)

# Sampler: t rss_kb fds threads active, one line per second.
sample() {
  local rss thr fds act
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$NETD_PID/status")
  thr=$(awk '/^Threads/ {print $2}' "/proc/$NETD_PID/status")
  fds=$(find "/proc/$NETD_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  act=$(ctl -o json stats 2>/dev/null | grep -o '"connections_active":[0-9]*' | awk -F: '{s += $2} END {print s + 0}')
  echo "$rss $fds $thr $act"
}
sleep 1
echo "soak: ${DURATION}s, scale $SCALE, netd pid $NETD_PID in netns $NS" >&2
ip netns exec "$NS" timeout "$LIMIT" "$LOAD" --tcp 127.0.0.1:7001 --udp 127.0.0.1:7002 --proxy 127.0.0.1:7003 \
  --http 127.0.0.1:7004 --secs "$((DURATION + 3))" --scale "$SCALE" > "$work/load.json" & LOAD_PID=$!; pids+=($LOAD_PID)
: > "$work/samples"
t0=$(date +%s.%N)
for t in $(seq "$DURATION"); do
  echo "$t $(sample)" >> "$work/samples"
  [ $((t % 60)) -eq 0 ] && echo "  ${t}s: rss_kb fds threads active = $(tail -1 "$work/samples" | cut -d' ' -f2-)" >&2
  kill -0 "$NETD_PID" 2>/dev/null || { echo "netd died" >&2; cat "$work/netd.log" >&2; exit 1; }
  # sleep until t0 + t, so sampling does not drift behind the load
  sleep "$(python3 -c "import sys,time; print(max(0.0, float(sys.argv[1]) + int(sys.argv[2]) - time.time()))" "$t0" "$t")"
done
wait "$LOAD_PID" || true
sleep 5
AFTER=$(sample)

echo "bench/soak.sh --duration $DURATION   (netd: tcp-echo, udp-echo, proxy, http, sniffer on lo; 5 stalled/slow watchers)"
echo "load: $(cat "$work/load.json" 2>/dev/null || echo '(no summary)')"
echo "watcher errors: $(cat "$work/watchers.log" 2>/dev/null | wc -l) lines; netd warnings: $(wc -l < "$work/netd.log") lines"
sed 's/^/  watcher: /' "$work/watchers.log" 2>/dev/null | sort | uniq -c | head -5 || true
sed 's/^/  netd: /' "$work/netd.log" | head -5
python3 - "$work/samples" "$AFTER" <<'PY'
import statistics, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
after = list(map(int, sys.argv[2].split()))
n = len(rows)
names = ["RSS, MiB", "open fds", "threads", "active connections"]
rules = [(0.10, 4096), (0.10, 16), (0.0, 2), (0.25, 16)]  # (TOL, SLACK) in sample units (RSS in KiB)
fail = []
print(f"| {n} samples, 1/s | start | peak | end | mean middle third | mean last third | limit | 5 s after load |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for i, (name, (tol, slack)) in enumerate(zip(names, rules)):
    s = [r[i + 1] for r in rows]
    mid = statistics.mean(s[n // 3: 2 * n // 3])
    last = statistics.mean(s[2 * n // 3:])
    limit = mid * (1 + tol) + slack
    f = (lambda v: f"{v / 1024:.1f}") if i == 0 else (lambda v: f"{v:.0f}" if isinstance(v, int) or v == int(v) else f"{v:.1f}")
    ok = last <= limit
    if not ok:
        fail.append(f"{name} grew: last third {f(last)} > {f(limit)}")
    print(f"| {name} | {f(s[0])} | {f(max(s))} | {f(s[-1])} | {f(mid)} | {f(last)} | {f(limit)} {'ok' if ok else 'FAIL'} | {f(after[i])} |")
if after[3] != 0:
    fail.append(f"{after[3]} connections still active 5 s after the load stopped")
if after[1] > rows[0][2] + 16:
    fail.append(f"fds not released: {after[1]} after the load, {rows[0][2]} at start")
print("verdict: " + ("FAIL: " + "; ".join(fail) if fail else "PASS (nothing grew beyond the tolerance)"))
sys.exit(1 if fail else 0)
PY
