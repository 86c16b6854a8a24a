#!/usr/bin/env bash
# The cost of saving one change with many listeners running (issue #29,
# deliverable 3: the state journal).
#
# Release build, loopback only, every step bounded. netd runs with an empty
# config and a state directory on this machine's disk (fsync is real); N
# TCP echo listeners are started over the API (16 at a time), then ROUNDS
# alternating rounds of:
#   - LONE lone starts (StartListener, one call in flight, each saved to
#     the state before it returns): calls/s, p50/p99;
#   - PAIRS start+stop pairs of one listener (the registry stays at its
#     size): pairs/s, p50/p99.
# Medians of the rounds; the state files' sizes and the machine's load
# average are printed with them (other builds share these 2 cores).
#
#   bench/state_bench.sh                 # N=4000 LONE=500 PAIRS=300 ROUNDS=3
#   NETD_BIN=/tmp/netd-base/netd bench/state_bench.sh   # another netd (main's)
#
# NETD_BIN runs another netd binary with the same probe (the API is the
# same), e.g. main's before the journal, built from `git archive main`.
. "$(dirname "$0")/lib.sh"
N=${N:-4000}
LONE=${LONE:-500}
PAIRS=${PAIRS:-300}
ROUNDS=${ROUNDS:-3}

want_fds=$((2 * (N + LONE * ROUNDS) + 400))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want_fds" ]; then
  ulimit -Hn "$want_fds" 2>/dev/null || { echo "needs $want_fds open files; the hard limit is $hard" >&2; exit 1; }
  hard=$want_fds
fi
ulimit -n "$hard"

build_release --bin netd --example control_probe
PROBE=$EXAMPLES/control_probe
BIN=${NETD_BIN:-$NETD}

printf 'max_listeners = %s\n[log]\nlevel = "warn"\n' $((N + LONE * ROUNDS + 100)) > "$work/netd.toml"
mkdir -p "$work/state"
NETD_CONTROL="unix:$work/netd.sock" NETD_STATE_DIR="$work/state" \
  "$BIN" --config "$work/netd.toml" 2>"$work/netd.log" &
pid=$!
pids+=("$pid")
wait_sock "$work/netd.sock"

fill=$("$PROBE" start "$work/netd.sock" --count "$N" --from 0 --conc 16)
echo "fill: $fill" >&2
: > "$work/rounds"
from=$N
for r in $(seq "$ROUNDS"); do
  lone=$("$PROBE" start "$work/netd.sock" --count "$LONE" --from "$from" --conc 1)
  from=$((from + LONE))
  pair=$("$PROBE" start "$work/netd.sock" --count "$PAIRS" --from 90000 --conc 1 --pairs 1)
  echo "{\"lone\": $lone, \"pair\": $pair}" >> "$work/rounds"
  echo "round $r: lone $lone" >&2
  echo "round $r: pair $pair" >&2
done
sizes=$(cd "$work/state" && stat -c '%n %s' listeners.* | tr '\n' ' ')
load=$(cut -d' ' -f1-3 /proc/loadavg)
stop_pid "$pid"

python3 - "$work/rounds" "$N" "$LONE" "$PAIRS" "$BIN" "$sizes" "$load" <<'PY'
import json, statistics, sys
rounds = [json.loads(l) for l in open(sys.argv[1])]
n, lone, pairs, binary, sizes, load = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
med = lambda k, f: statistics.median(r[k][f] for r in rounds)
print(f"netd: {binary}; {n} listeners running; {len(rounds)} rounds (medians); load average {load}")
print(f"{'measure':<44} {'result':<12} detail")
print(f"{'lone StartListener x' + lone + ', 1 in flight':<44} {med('lone', 'per_sec'):>6.0f}/s    p50 {med('lone', 'p50_ms'):.2f} ms p99 {med('lone', 'p99_ms'):.2f} ms")
print(f"{'start+stop pair x' + pairs + ', 1 in flight':<44} {med('pair', 'per_sec'):>6.0f}/s    p50 {med('pair', 'p50_ms'):.2f} ms p99 {med('pair', 'p99_ms'):.2f} ms")
print(f"state files at the end: {sizes}")
PY
