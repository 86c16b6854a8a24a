#!/usr/bin/env bash
# Cost of the data-path counters (issue: live traffic stats).
#
# Builds netd twice, with the counters compiled in (normal) and out
# (--features bench-no-counters), runs both side by side on loopback, and
# drives TCP echo throughput through each in alternating rounds with
# bench/echo_load.rs. Prints the median of each and the overhead.
#
#   bench/stats_overhead.sh     # ROUNDS=7 SECS=3 CONNS=4 CHUNK=16384 by default
#
# Loopback only; every load run is bounded by SECS.
. "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-7}
SECS=${SECS:-3}
CONNS=${CONNS:-4}
CHUNK=${CHUNK:-16384}

build_release --bin netd --example echo_load
build_release --bin netd --features bench-no-counters --target-dir target/bench-nocounters
ON=$NETD
OFF=$PWD/target/bench-nocounters/release/netd
LOAD=$EXAMPLES/echo_load

# Pin the daemon and the load generator to different cores when there are
# two or more, which cuts the run-to-run spread considerably.
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_SERVER="taskset -c 0"; PIN_CLIENT="taskset -c 1"
else
  PIN_SERVER=""; PIN_CLIENT=""
fi

start() { # name binary port
  printf '[log]\nlevel = "warn"\n[[listener]]\nname = "e"\nkind = "tcp-echo"\nlisten = "127.0.0.1:%s"\n' "$3" > "$work/$1.toml"
  # shellcheck disable=SC2086
  NETD=$2 start_netd "$1" "$work/$1.toml" $PIN_SERVER
}
PORT_ON=$(free_port); start on "$ON" "$PORT_ON"
PORT_OFF=$(free_port); start off "$OFF" "$PORT_OFF"

: > "$work/results"
for r in $(seq "$ROUNDS"); do
  for v in on off; do
    port=PORT_${v^^}
    g=$($PIN_CLIENT "$LOAD" "127.0.0.1:${!port}" --conns "$CONNS" --secs "$SECS" --chunk "$CHUNK" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gbit_per_sec"])')
    echo "$v $g" >> "$work/results"
    echo "round $r counters-$v: $g Gbit/s" >&2
  done
done

python3 - "$work/results" "$ROUNDS" "$SECS" "$CONNS" "$CHUNK" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
on = [float(g) for v, g in rows if v == "on"]
off = [float(g) for v, g in rows if v == "off"]
mon, moff = statistics.median(on), statistics.median(off)
print(f"TCP echo throughput, {sys.argv[4]} connections, {sys.argv[5]}-byte writes, {sys.argv[2]} alternating rounds of {sys.argv[3]}s (median)")
print(f"| build | Gbit/s (median) | min | max |")
print(f"| --- | --- | --- | --- |")
print(f"| counters off (bench-no-counters) | {moff:.2f} | {min(off):.2f} | {max(off):.2f} |")
print(f"| counters on (default) | {mon:.2f} | {min(on):.2f} | {max(on):.2f} |")
print(f"| ratio on/off | {mon/moff:.3f} | | |")
print(f"counter overhead: {(1 - mon/moff)*100:.1f}% (goal: under 3%)")
PY
