#!/usr/bin/env bash
# Capture completeness and CPU of netd's sniffer against tcpdump, side by
# side on the same traffic in one run. Everything happens inside a network
# namespace this script creates (and deletes): small UDP datagrams at
# increasing rates to 127.0.0.1 there, captured on that namespace's lo by a
# fresh netd sniffer and a fresh tcpdump (-w /dev/null) per rate, both with
# the filter "udp and port P". Counts are compared with what was sent; CPU is
# utime+stime of each process over the run (netd's whole process, idle
# otherwise), from the threads' schedstat. Note that on loopback the kernel's
# work of delivering a packet to a capture socket (and, for tcpdump, of
# copying it into its ring) runs in the sender's context, so neither tool is
# charged for it.
#
#   bench/sniffer_bench.sh        # RATES="10000 25000 50000 100000 200000" SECS=3
. "$(dirname "$0")/lib.sh"
RATES=${RATES:-"10000 25000 50000 100000 200000"}
SECS=${SECS:-3}

need tcpdump ip=iproute2
build_release --bin netd --bin netctl --example udp_flood
FLOOD=$EXAMPLES/udp_flood

bench_netns "netd-bench-$$"
# CPU time of a process in ns: the sum over its threads of schedstat's
# on-CPU time (exact, unlike /proc/PID/stat's 10 ms ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

quiet_config "$work/netd.toml"
start_netd netd "$work/netd.toml" ip netns exec "$NS"; NETD_PID=$netd_pid
ctl() { ctl_at netd "$@"; }

: > "$work/results"
port=40000
for rate in $RATES; do
  port=$((port + 1))
  count=$((rate * SECS))
  name="s$rate"
  ctl start sniffer "$name" --interface lo --filter "udp and port $port" >/dev/null
  ip netns exec "$NS" tcpdump -i lo -n -w /dev/null "udp and port $port" 2>"$work/tcpdump.err" & TD=$!
  for _ in $(seq 200); do grep -q "listening on" "$work/tcpdump.err" && break; sleep 0.05; done
  n0=$(cpu_ns "$NETD_PID"); t0=$(cpu_ns "$TD")
  flood=$(inns "$FLOOD" "127.0.0.1:$port" --count "$count" --rate "$rate")
  sleep 1
  n1=$(cpu_ns "$NETD_PID")
  t1=$(cpu_ns "$TD")
  kill -INT "$TD"; wait "$TD" || true
  ours=$(ctl -o json status "$name" | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]["sniffer"]; print(s["udp"]["packets"], s["kernel_drops"])')
  ctl stop "$name" >/dev/null
  theirs=$(python3 -c '
import re,sys
t=open(sys.argv[1]).read()
cap=re.search(r"(\d+) packets? captured",t); drop=re.search(r"(\d+) packets? dropped by kernel",t)
print(cap.group(1) if cap else 0, drop.group(1) if drop else 0)' "$work/tcpdump.err")
  echo "$rate $flood $ours $theirs $((n1 - n0)) $((t1 - t0))" >> "$work/results"
  echo "rate $rate: flood $flood netd(count drops) $ours tcpdump(count drops) $theirs cpu ns netd $((n1 - n0)) tcpdump $((t1 - t0))" >&2
done

echo "udp_flood 127.0.0.1:PORT --count RATE*$SECS --rate RATE   (16-byte UDP payload, 58-byte frames)"
echo "netctl start sniffer sN --interface lo --filter \"udp and port PORT\"   |   tcpdump -i lo -n -w /dev/null \"udp and port PORT\""
python3 - "$work/results" <<'PY'
import json, sys
print("| target pps | achieved pps | sent | netd captured | tcpdump captured | kernel drops netd / tcpdump | netd CPU ms | tcpdump CPU ms | netd/tcpdump CPU |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for line in open(sys.argv[1]):
    rate, flood, ours, ourdrops, theirs, theirdrops, nt, tt = line.split()
    f = json.loads(flood)
    sent, ours, theirs = f["sent"], int(ours), int(theirs)
    nc, tc = int(nt) / 1e6, int(tt) / 1e6
    ratio = f"{nc / tc:.2f}" if tc else "-"
    print(f"| {int(rate):,} | {f['rate']:,.0f} | {sent:,} | {ours:,} ({100*ours/sent:.1f}%) | {theirs:,} ({100*theirs/sent:.1f}%) | {ourdrops} / {theirdrops} | {nc:.1f} | {tc:.1f} | {ratio} |")
PY
