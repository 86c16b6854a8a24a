#!/usr/bin/env bash
# The cost of netd's fault layer on the TCP proxy, and the accuracy of the
# bandwidth toxic, loopback only, release build:
#   a. three netd processes side by side, each a proxy in front of the same
#      upstreams: "off" = built with the bench-no-faults feature (the fault
#      layer compiled out), "none" = the normal build without faults,
#      "lat0" = the normal build with a `latency 0` toxic on each proxy (every
#      connection takes the faulty path). Bulk stream (iperf3 through each
#      proxy) and new connections/s (bench/conn_load.rs, 50 clients),
#      ROUNDS rounds in rotating order, medians, plus each proxy's CPU time.
#   b. bandwidth toxic accuracy: a proxy per rate (10 KB/s to 1 GB/s) in
#      front of a source that sends as fast as it can; a client measures
#      what arrives over a few seconds after a short warm-up.
# Prints one table with ratios.
#
#   bench/fault_bench.sh        # SECS=4 CONNS=50 ROUNDS=3 by default
#   NETD_OFF=/path/netd-built-with-bench-no-faults bench/fault_bench.sh
. "$(dirname "$0")/lib.sh"
SECS=${SECS:-4}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}

need iperf3

# Two builds of the same tree: the fault layer compiled out, then normal
# (NETD_OFF=path uses a bench-no-faults binary built before).
if [ -n "${NETD_OFF:-}" ]; then
  cp "$NETD_OFF" "$work/netd-off"
else
  build_release --features bench-no-faults --bin netd
  cp "$NETD" "$work/netd-off"
fi
build_release --bin netd --bin netctl --example conn_load
LOAD=$EXAMPLES/conn_load

# Upstreams: a netd TCP echo and an iperf3 server. Each netd keeps its
# runtime state in $work (start_netd), not in the machine's state dir.
quiet_config "$work/quiet.toml"
start_netd up "$work/quiet.toml"
ECHO=$(free_port)
ctl_at up start tcp-echo up --listen "127.0.0.1:$ECHO" --max-connections 100000 >/dev/null
IPERF=$(free_port)
iperf3 -s -p "$IPERF" -D --pidfile "$work/iperf.pid"; sleep 0.3; pids+=("$(cat "$work/iperf.pid")")

# The three proxies, declared in a config each (faults are part of the
# listener's spec).
declare -A PID PE PI
for v in off none lat0; do
  PE[$v]=$(free_port); PI[$v]=$(free_port)
  fault=""
  [ "$v" = lat0 ] && fault=$'[[listener.faults]]\nname = "lat0"\ntype = "latency"\nlatency = "0ms"\ndirection = "both"\n'
  {
    printf '[log]\nlevel = "warn"\n'
    printf '[[listener]]\nname = "pe"\nkind = "proxy"\nlisten = "127.0.0.1:%s"\nupstreams = ["127.0.0.1:%s"]\nmax_connections = 100000\n%s' "${PE[$v]}" "$ECHO" "$fault"
    printf '[[listener]]\nname = "pi"\nkind = "proxy"\nlisten = "127.0.0.1:%s"\nupstreams = ["127.0.0.1:%s"]\n%s' "${PI[$v]}" "$IPERF" "$fault"
  } > "$work/$v.toml"
  bin=$NETD; [ "$v" = off ] && bin="$work/netd-off"
  NETD=$bin start_netd "$v" "$work/$v.toml"; PID[$v]=$netd_pid
  wait_port "${PE[$v]}"; wait_port "${PI[$v]}"
done

# One bulk run through proxy $1: "Gbit/s cpu_s_per_GB"
bulk() {
  local before out after
  before=$(cpu_ticks "${PID[$1]}")
  out=$(iperf3 -c 127.0.0.1 -p "${PI[$1]}" -t "$SECS" -J)
  after=$(cpu_ticks "${PID[$1]}")
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])["end"]["sum_received"]
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(r["bits_per_second"] / 1e9, cpu / (r["bytes"] / 1e9))' "$out" "$before" "$after" "$HZ"
}
# One connection-rate run through proxy $1: "rate cpu_us_per_conn"
rate() {
  local before out after
  before=$(cpu_ticks "${PID[$1]}")
  out=$("$LOAD" rate "127.0.0.1:${PE[$1]}" --conns "$CONNS" --secs "$SECS")
  after=$(cpu_ticks "${PID[$1]}")
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(r["rate"], cpu * 1e6 / max(r["exchanges"], 1), r["errors"])' "$out" "$before" "$after" "$HZ"
}

orders=("off none lat0" "none lat0 off" "lat0 off none")
: > "$work/bulk"; : > "$work/rate"
for round in $(seq "$ROUNDS"); do
  order=${orders[$(( (round - 1) % 3 ))]}
  for v in $order; do echo "$v $(bulk "$v")" | tee -a "$work/bulk" >&2; done
  for v in $order; do echo "$v $(rate "$v")" | tee -a "$work/rate" >&2; done
done

# b. Bandwidth accuracy: one netd, a proxy per rate, in front of a source.
SRC=$(free_port)
python3 - "$SRC" <<'PY' & pids+=($!)
import socket, sys, threading, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(16)
buf = b"\x5a" * (1 << 20)
def serve(c):
    end = time.monotonic() + 15          # bounded: at most 15 s per client
    try:
        while time.monotonic() < end:
            c.sendall(buf)
    except OSError:
        pass
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
wait_port "$SRC"
# 10 GB/s is above what this path moves here: its row is the ceiling (what
# arrives through a faulty-path proxy at all), for reading the 1 GB/s row.
RATES=(10KB/s 100KB/s 1MB/s 10MB/s 100MB/s 1GB/s 10GB/s)
declare -A BWP
{
  printf '[log]\nlevel = "warn"\n'
  for r in "${RATES[@]}"; do
    BWP[$r]=$(free_port)
    printf '[[listener]]\nname = "bw%s"\nkind = "proxy"\nlisten = "127.0.0.1:%s"\nupstreams = ["127.0.0.1:%s"]\n' \
      "${BWP[$r]}" "${BWP[$r]}" "$SRC"
    printf '[[listener.faults]]\nname = "bw"\ntype = "bandwidth"\nrate = "%s"\n' "$r"
  done
} > "$work/bw.toml"
start_netd bw "$work/bw.toml"
for r in "${RATES[@]}"; do wait_port "${BWP[$r]}"; done
: > "$work/bw"
for r in "${RATES[@]}"; do
  # Slow rates get longer runs (a bounded amount of data either way).
  case $r in 10KB/s) secs=6 ;; 100KB/s) secs=4 ;; *) secs=3 ;; esac
  python3 - "${BWP[$r]}" "$secs" "$r" <<'PY' | tee -a "$work/bw" >&2
import socket, sys, time
port, secs, label = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
buf = bytearray(4 << 20); mv = memoryview(buf)
t0 = time.monotonic(); warm = t0 + 0.5; end = warm + secs
start = None; got = 0
while True:
    n = s.recv_into(mv)
    now = time.monotonic()
    if n == 0:
        break
    if start is None:
        if now >= warm:
            start = now
        continue
    got += n
    last = now
    if now >= end:
        break
s.close()
print(label, got / (last - start))
PY
done

python3 - "$work/bulk" "$work/rate" "$work/bw" "$SECS" "$CONNS" "$ROUNDS" <<'PY'
import statistics, sys
def table(path):
    out = {}
    for line in open(path):
        f = line.split()
        out.setdefault(f[0], []).append([float(x) for x in f[1:]])
    return {k: [statistics.median(c) for c in zip(*v)] for k, v in out.items()}
bulk, rate = table(sys.argv[1]), table(sys.argv[2])
secs, conns, rounds = sys.argv[4:7]
print(f"Fault layer cost on the TCP proxy, loopback, median of {rounds} rounds (order rotating), {secs}s runs")
print("  off  = built with --features bench-no-faults (fault layer compiled out)")
print("  none = normal build, no faults;  lat0 = normal build, a `latency 0` toxic (direction both) on the proxy")
print("  bulk: iperf3 -c 127.0.0.1 -p PROXY -t SECS (iperf3 -s behind); rate: conn_load rate --conns", conns)
print("| metric | off | none | lat0 | none/off | lat0/none |")
print("| --- | --- | --- | --- | --- | --- |")
def row(name, a, b, c, fmt):
    print(f"| {name} | {fmt(a)} | {fmt(b)} | {fmt(c)} | {b / a:.3f} | {c / b:.3f} |")
row("bulk stream, Gbit/s", bulk["off"][0], bulk["none"][0], bulk["lat0"][0], lambda x: f"{x:.2f}")
row("proxy CPU per GB of bulk, s", bulk["off"][1], bulk["none"][1], bulk["lat0"][1], lambda x: f"{x:.3f}")
row("new connections/s", rate["off"][0], rate["none"][0], rate["lat0"][0], lambda x: f"{x:.0f}")
row("proxy CPU per connection, µs", rate["off"][1], rate["none"][1], rate["lat0"][1], lambda x: f"{x:.1f}")
print(f"| client errors (rate runs, median) | {rate['off'][2]:.0f} | {rate['none'][2]:.0f} | {rate['lat0'][2]:.0f} | | |")
print()
print("Bandwidth toxic accuracy: a source sending flat out, measured at the client after 0.5 s warm-up")
print("| rate set | measured, B/s | measured/set | error |")
print("| --- | --- | --- | --- |")
units = {"KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9}
for line in open(sys.argv[3]):
    label, got = line.split()
    for u, m in units.items():
        if label.endswith(u):
            want = float(label[: -len(u)]) * m
    r = float(got) / want
    print(f"| {label} | {float(got):,.0f} | {r:.4f} | {(r - 1) * 100:+.2f}% |")
PY
