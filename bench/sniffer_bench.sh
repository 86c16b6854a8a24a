#!/usr/bin/env bash
# Capture completeness and CPU of netd's sniffer against tcpdump, side by
# side on the same traffic in one run. Everything happens inside a network
# namespace this script creates (and deletes): small UDP datagrams at
# increasing rates to 127.0.0.1 there, from FLOWS sockets (so FLOWS flows,
# which netd's PACKET_FANOUT spreads over its rings) on THREADS threads with
# sendmmsg batches of BATCH, captured on that namespace's lo by a fresh netd
# sniffer and a fresh tcpdump (-w /dev/null) per rate, both with the filter
# "udp and port P". Counts are compared with what was sent; CPU is
# utime+stime of each process over the run (netd's whole process, idle
# otherwise), from the threads' schedstat. For each tool the highest rate
# with zero loss (every datagram captured, no kernel drop) is reported, and
# the ratio of netd's to tcpdump's. Note that on loopback the kernel's
# work of delivering a packet to a capture socket (and of copying it into
# the ring) runs in the sender's context, so neither tool is charged for it.
#
#   bench/sniffer_bench.sh   # RATES="100000 200000 400000 800000 1600000" SECS=2
#                            # FLOWS=16 THREADS=2 BATCH=32 RINGS=(netd's default)
. "$(dirname "$0")/lib.sh"
RATES=${RATES:-"100000 200000 400000 800000 1600000"}
SECS=${SECS:-2}
FLOWS=${FLOWS:-16}
THREADS=${THREADS:-2}
BATCH=${BATCH:-32}
RINGS=${RINGS:-}

need tcpdump ip=iproute2
build_release --bin netd --bin netctl --example udp_flood
FLOOD=$EXAMPLES/udp_flood

bench_netns "netd-bench-$$"
# CPU time of a process in ns: the sum over its threads of schedstat's
# on-CPU time (exact, unlike /proc/PID/stat's 10 ms ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

quiet_config "$work/netd.toml"
if [ -n "$RINGS" ]; then
  start_netd netd "$work/netd.toml" ip netns exec "$NS" env NETD_SNIFFER_RINGS="$RINGS"
else
  start_netd netd "$work/netd.toml" ip netns exec "$NS"
fi
NETD_PID=$netd_pid
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
  flood=$(inns "$FLOOD" "127.0.0.1:$port" --count "$count" --rate "$rate" \
    --flows "$FLOWS" --threads "$THREADS" --batch "$BATCH")
  sleep 1
  n1=$(cpu_ns "$NETD_PID")
  t1=$(cpu_ns "$TD")
  kill -INT "$TD"; wait "$TD" || true
  ours=$(ctl -o json status "$name" | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]["sniffer"]; print(s["udp"]["packets"], s["kernel_drops"], s.get("rings", 1))')
  ctl stop "$name" >/dev/null
  theirs=$(python3 -c '
import re,sys
t=open(sys.argv[1]).read()
cap=re.search(r"(\d+) packets? captured",t); drop=re.search(r"(\d+) packets? dropped by kernel",t)
print(cap.group(1) if cap else 0, drop.group(1) if drop else 0)' "$work/tcpdump.err")
  echo "$rate $flood $ours $theirs $((n1 - n0)) $((t1 - t0))" >> "$work/results"
  echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  echo "rate $rate: flood $flood netd(count drops) $ours tcpdump(count drops) $theirs cpu ns netd $((n1 - n0)) tcpdump $((t1 - t0))" >&2
done

echo "udp_flood 127.0.0.1:PORT --count RATE*$SECS --rate RATE --flows $FLOWS --threads $THREADS --batch $BATCH   (16-byte UDP payload, 58-byte frames)"
echo "netctl start sniffer sN --interface lo --filter \"udp and port PORT\"   |   tcpdump -i lo -n -w /dev/null \"udp and port PORT\""
python3 - "$work/results" <<'PY'
import json, sys
rows = []
print("| target pps | achieved pps | sent | netd rings | netd captured | tcpdump captured | kernel drops netd / tcpdump | netd CPU ns/pkt | tcpdump CPU ns/pkt | netd/tcpdump CPU |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for line in open(sys.argv[1]):
    rate, flood, ours, ourdrops, rings, theirs, theirdrops, nt, tt = line.split()
    f = json.loads(flood)
    sent, ours, theirs = f["sent"], int(ours), int(theirs)
    npp, tpp = int(nt) / max(ours, 1), int(tt) / max(theirs, 1)
    ratio = f"{npp / tpp:.2f}" if tpp else "-"
    rows.append((f["rate"], sent == ours and ourdrops == "0", sent == theirs and theirdrops == "0", npp, tpp))
    print(f"| {int(rate):,} | {f['rate']:,.0f} | {sent:,} | {rings} | {ours:,} ({100*ours/sent:.1f}%) | {theirs:,} ({100*theirs/sent:.1f}%) | {ourdrops} / {theirdrops} | {npp:.0f} | {tpp:.0f} | {ratio} |")
def best(i):
    # The highest achieved rate of the steps before the first loss (the
    # achieved rate is the sender's: it may fall short of the target).
    top = 0
    for r in rows:
        if not r[i]:
            break
        top = max(top, r[0])
    return top
n, t = best(1), best(2)
lossless_all = all(r[1] and r[2] for r in rows)
print()
print(f"highest zero-loss rate: netd {n:,.0f} pps, tcpdump {t:,.0f} pps; ratio {n / t:.2f}" if t else f"highest zero-loss rate: netd {n:,.0f} pps, tcpdump none")
if lossless_all:
    print("(neither lost a packet at any step: the ratio is bounded by the sender, not by either capture)")
PY
