#!/usr/bin/env bash
# The control plane with many listeners (issue #14, part 4).
#
# Release build, loopback only, every step bounded. Measures:
#   1. boot: netd starting N TCP echo listeners from its config file, wall
#      time until the last one answers, and netd's CPU time for it;
#   2. start over the API (as netctl does, one StartListener per listener,
#      each persisted to the state file before it returns), N listeners one
#      at a time and CONC at a time: time, p50/p99 per call, netd CPU, and
#      the time of the first and last tenth (a start whose cost grows with
#      the registry shows there); then NETCTL real `netctl start` runs on
#      top of the N, each a new process;
#   3. ListListeners and GetStats of all N, paged: time and bytes;
#   4. WatchStats with N idle listeners: the snapshot's size, then bytes and
#      netd CPU per idle tick, against netd's CPU with no watch over the
#      same time (ROUNDS alternating rounds, medians).
#
#   bench/control_scale.sh     # N=10000 START_N=N CONC=16 NETCTL=200 TICKS=15 ROUNDS=3
#
# START_N bounds step 2 (one-at-a-time starts grow O(N) each: see bench/README.md).
#
# Each listener holds two descriptors (its socket and the copy kept for a
# hand-over), so N=10000 needs more than 20000: the script raises the hard
# limit if it may (CAP_SYS_RESOURCE), else lowers N to what fits.
# NETCTL is read before lib.sh names the netctl binary $NETCTL.
NETCTL_RUNS=${NETCTL:-200}
. "$(dirname "$0")/lib.sh"
N=${N:-10000}
CONC=${CONC:-16}
TICKS=${TICKS:-15}
ROUNDS=${ROUNDS:-3}
START_N=${START_N:-$N}

want_fds=$((2 * (N + NETCTL_RUNS) + 200))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want_fds" ]; then
  if ulimit -Hn "$want_fds" 2>/dev/null; then
    hard=$want_fds
  else
    fit=$(( (hard - 200) / 2 - NETCTL_RUNS ))
    fit=$(( fit / 100 * 100 ))
    echo "N=$N needs $want_fds open files; the hard limit is $hard and cannot be raised here: N=$fit" >&2
    N=$fit
  fi
fi
ulimit -n "$hard"

build_release --bin netd --bin netctl --example control_probe
PROBE=$EXAMPLES/control_probe
pid=""

cpu() { # utime+stime of $pid in seconds (clock ticks of 1/100 s)
  awk '{ sub(/.*\) /, ""); print ($12 + $13) / 100 }' "/proc/$pid/stat"
}
jget() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# netd with config $1 (listener tables appended to the settings below).
# Not start_netd: booting N listeners takes longer than it waits.
launch() {
  {
    printf 'max_listeners = %s\n[log]\nlevel = "warn"\n' $((N + NETCTL_RUNS + 100))
    cat "$1"
  } > "$work/netd.toml"
  rm -rf "$work/state" "$work/netd.sock"
  mkdir -p "$work/state"
  NETD_CONTROL="unix:$work/netd.sock" NETD_STATE_DIR="$work/state" \
    "$NETD" --config "$work/netd.toml" 2>"$work/netd.log" &
  pid=$!
  pids+=("$pid")
}
stop_netd() { stop_pid "$pid"; pid=""; }
ctl() { "$NETCTL" --control "unix:$work/netd.sock" "$@"; }

# 1. Boot from the config file.
python3 - "$N" > "$work/boot.toml" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print(f'[[listener]]\nname = "l{i:05}"\nkind = "tcp-echo"\nlisten = "127.0.0.1:0"')
PY
t0=$(date +%s.%N)
launch "$work/boot.toml"
last=$(printf 'l%05d' $((N - 1)))
for _ in $(seq 1200); do
  ctl stats "$last" >/dev/null 2>&1 && break
  sleep 0.1
done
ctl stats "$last" >/dev/null || { echo "netd did not start $N listeners" >&2; tail "$work/netd.log" >&2; exit 1; }
boot_secs=$(python3 -c "import time; print(time.time() - $t0)")
boot_cpu=$(cpu)
echo "boot: $N listeners in ${boot_secs}s, netd CPU ${boot_cpu}s" >&2

# 3. Paged reads, 4. the watch, alternating with a no-watch baseline.
: > "$work/rounds"
for r in $(seq "$ROUNDS"); do
  l=$("$PROBE" list "$work/netd.sock"); s=$("$PROBE" stats "$work/netd.sock")
  w=$("$PROBE" watch "$work/netd.sock" --interval-ms 1000 --ticks "$TICKS" --pid "$pid")
  i=$("$PROBE" idle --pid "$pid" --secs "$TICKS")
  echo "$l" >> "$work/list"; echo "$s" >> "$work/stats"; echo "$w" >> "$work/watch"; echo "$i" >> "$work/idle"
  echo "round $r: list $l" >&2; echo "round $r: stats $s" >&2
  echo "round $r: watch $w" >&2; echo "round $r: idle $i" >&2
done
stop_netd

# 2. Starts over the API, one at a time, then CONC at a time, each on a
# fresh netd with an empty config (state file on).
: > "$work/empty.toml"
for conc in 1 "$CONC"; do
  launch "$work/empty.toml"
  for _ in $(seq 100); do [ -S "$work/netd.sock" ] && break; sleep 0.05; done
  c0=$(cpu)
  o=$("$PROBE" start "$work/netd.sock" --count "$START_N" --conc "$conc")
  c1=$(cpu)
  echo "$o" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["netd_cpu_secs"]=float(sys.argv[1]); d["state_bytes"]=int(sys.argv[2]); print(json.dumps(d))' \
    "$(python3 -c "print($c1 - $c0)")" "$(stat -c %s "$work/state/"* | head -1)" >> "$work/starts"
  echo "start conc $conc: $(tail -1 "$work/starts")" >&2
  if [ "$conc" = 1 ]; then
    # Real netctl processes on top of the N.
    t0=$(date +%s.%N); c0=$(cpu)
    for i in $(seq "$NETCTL_RUNS"); do
      ctl start tcp-echo "n$i" --listen 127.0.0.1:0 >/dev/null
    done
    netctl_secs=$(python3 -c "import time; print(time.time() - $t0)"); c1=$(cpu)
    netctl_cpu=$(python3 -c "print($c1 - $c0)")
    echo "netctl start x$NETCTL_RUNS on top of $START_N: ${netctl_secs}s, netd CPU ${netctl_cpu}s" >&2
  fi
  stop_netd
done

python3 - "$work" "$N" "$TICKS" "$boot_secs" "$boot_cpu" "$NETCTL_RUNS" "$netctl_secs" "$netctl_cpu" "$START_N" <<'PY'
import json, statistics, sys
work, n, ticks, start_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[9])
boot_secs, boot_cpu = float(sys.argv[4]), float(sys.argv[5])
runs, nsecs, ncpu = int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
load = lambda f: [json.loads(l) for l in open(f"{work}/{f}")]
med = lambda xs: statistics.median(xs)
lst, sts, w, idle, starts = load("list"), load("stats"), load("watch"), load("idle"), load("starts")
rows = [
    ("boot from config", f"{n} listeners", f"{boot_secs:.2f} s wall, netd CPU {boot_cpu:.2f} s ({1e6*boot_cpu/n:.0f} µs each)"),
]
for s in starts:
    rows.append((f"StartListener x{s['started']}, {s['conc']} in flight",
                 f"{s['per_sec']:.0f}/s",
                 f"{s['secs']:.1f} s, p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms, first/last tenth {s['first_tenth_secs']:.1f}/{s['last_tenth_secs']:.1f} s, netd CPU {s['netd_cpu_secs']:.1f} s, state file {s['state_bytes']/1024:.0f} KiB"))
rows.append((f"netctl start x{runs} (processes) on top of {start_n}", f"{runs/nsecs:.0f}/s",
             f"{1e3*nsecs/runs:.1f} ms each, netd CPU {1e3*ncpu/runs:.2f} ms each"))
rows.append((f"ListListeners, all {n} (paged)", f"{med([x['pages'] for x in lst]):.0f} pages",
             f"{1e3*med([x['secs'] for x in lst]):.0f} ms, {med([x['bytes'] for x in lst])/1024:.0f} KiB"))
rows.append((f"GetStats, all {n} (paged)", f"{med([x['pages'] for x in sts]):.0f} pages",
             f"{1e3*med([x['secs'] for x in sts]):.0f} ms, {med([x['bytes'] for x in sts])/1024:.0f} KiB"))
rows.append(("WatchStats snapshot", f"{med([x['snapshot_messages'] for x in w]):.0f} messages",
             f"{med([x['snapshot_bytes'] for x in w])/1024:.0f} KiB in {1e3*med([x['snapshot_secs'] for x in w]):.0f} ms"))
tick_b = med([x["tick_bytes_median"] for x in w])
tick_max = max(x["tick_bytes_max"] for x in w)
watch_pct = med([x["cpu_pct"] for x in w])
idle_pct = med([x["cpu_pct"] for x in idle])
rows.append((f"WatchStats, {n} idle listeners, 1 s interval", f"{tick_b:.0f} B/tick (max {tick_max})",
             f"goal < 1 KB: {'met' if tick_max < 1000 else 'NOT met'}"))
rows.append(("  netd CPU with the watch / without", f"{watch_pct:.2f}% / {idle_pct:.2f}% of a core",
             f"added {watch_pct - idle_pct:.2f}% = {10*(watch_pct-idle_pct):.2f} ms per tick; goal ≤ 1%: {'met' if watch_pct - idle_pct <= 1.0 else 'NOT met'}"))
print(f"{'measure':<48} {'result':<26} detail")
for a, b, c in rows:
    print(f"{a:<48} {b:<26} {c}")
PY
