#!/usr/bin/env bash
# bench/udp_bench.sh: netd's udp-proxy against nginx's `stream` UDP proxy,
# and netd's udp-echo with its fast path (recvmmsg/sendmmsg batches, UDP
# GRO/GSO) and its socket per worker against the same binary with both
# switched off (NETD_UDP_BATCH=1 NETD_UDP_OFFLOAD=off NETD_REUSEPORT=off:
# one socket, one datagram per system call, as netd did before issue 29);
# both kinds also on the same binary with only its socket groups off
# (NETD_REUSEPORT=off: one socket and one receive loop per listener
# instead of one per per-core worker), as "netd-1sock".
# All in a network namespace of its own, on its loopback.
#
# Load: bench/udp_load.rs (release), one sender thread with 8 sockets and
# sendmmsg batches of 32, offering more than either proxy carries.
#   delivered   one-way, unlimited offer for SECS s: datagrams/s reaching
#               the upstream (udp_load's own sink)
#   zero-loss   one-way, a stepped search (STEPS steps of 1 s, doubling from
#               20k/s, then bisecting) for the highest rate with loss at
#               most LOSS_OK
#   answered    udp-echo, request/response, unlimited offer: replies/s,
#               and the netd process's CPU per reply (/proc ticks over the run)
# nginx: worker_processes 2, `listen ... udp reuseport` (one socket per
# worker), proxy_timeout 10s. netd: its release build; the udp-proxy with
# --idle-timeout 10s and room for every run's clients (--max-clients and
# --max-clients-per-source 4096: all clients come from 127.0.0.1), the
# udp-echo with --rate-limit off (its default, 100/s per source, would
# measure the limit).
#
# Rounds alternate the order of the contenders; medians of ROUNDS rounds.
#
#   ROUNDS=3 SECS=3 SIZES="64 1400" STEPS=8 LOSS_OK=0.001 bench/udp_bench.sh
#   PARTS="proxy echo" (either alone skips the other's runs)
#   ECHO_THREADS=1: udp_load sender threads for the echo's request/response
#   runs, each with 8 sockets waiting for their replies (on 2 cores, 2
#   threads halve every echo figure: the clients take netd's CPU)
. "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
SECS=${SECS:-3}
SIZES=${SIZES:-"64 1400"}
STEPS=${STEPS:-8}
LOSS_OK=${LOSS_OK:-0.001}
PARTS=${PARTS:-proxy echo}
ECHO_THREADS=${ECHO_THREADS:-1}

need nginx python3
NGX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so
if [ ! -e "$NGX_STREAM" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnginx-mod-stream
fi
build_release --bins --example udp_load
LOAD=$EXAMPLES/udp_load

bench_netns "udpbench-$$"
# The namespace is the bench's own: fixed ports cannot clash.
UP=40001 NETD_PROXY=40002 NGINX_PROXY=40003 ECHO_FAST=40004 ECHO_SLOW=40005
ONE_PROXY=40006 ECHO_ONE=40007

cat > "$work/nginx.conf" <<CFG
load_module $NGX_STREAM;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log error;
events { worker_connections 4096; }
stream {
  server {
    listen 127.0.0.1:$NGINX_PROXY udp reuseport;
    proxy_pass 127.0.0.1:$UP;
    proxy_timeout 10s;
  }
}
CFG
ip netns exec "$NS" nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)

quiet_config "$work/netd.toml"
start_netd fast "$work/netd.toml" ip netns exec "$NS"; FAST_PID=$netd_pid
# Every run opens 8 new clients from 127.0.0.1: the per-source client cap
# (64 by default) would refuse them after eight runs; clients idle for 10 s
# are forgotten, as nginx's proxy_timeout 10s forgets its sessions.
ctl_at fast start udp-proxy p --listen 127.0.0.1:$NETD_PROXY --upstream 127.0.0.1:$UP \
  --max-clients 4096 --max-clients-per-source 4096 --idle-timeout 10s >/dev/null
ctl_at fast start udp-echo e --listen 127.0.0.1:$ECHO_FAST --rate-limit off >/dev/null
start_netd slow "$work/netd.toml" ip netns exec "$NS" env NETD_UDP_BATCH=1 NETD_UDP_OFFLOAD=off NETD_REUSEPORT=off; SLOW_PID=$netd_pid
ctl_at slow start udp-echo e --listen 127.0.0.1:$ECHO_SLOW --rate-limit off >/dev/null
start_netd one "$work/netd.toml" ip netns exec "$NS" env NETD_REUSEPORT=off; ONE_PID=$netd_pid
ctl_at one start udp-proxy p --listen 127.0.0.1:$ONE_PROXY --upstream 127.0.0.1:$UP \
  --max-clients 4096 --max-clients-per-source 4096 --idle-timeout 10s >/dev/null
ctl_at one start udp-echo e --listen 127.0.0.1:$ECHO_ONE --rate-limit off >/dev/null
sleep 0.5

json() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1"; }
load() { inns timeout 120 "$LOAD" "$@" 2>>"$work/search.log"; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
results=$work/results
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="nginx netd netd-1sock"; eorder="slow fast one"
  else order="netd-1sock netd nginx"; eorder="one fast slow"; fi
  for size in $SIZES; do
    for who in $order; do
      [[ " $PARTS " == *" proxy "* ]] || break
      case $who in nginx) port=$NGINX_PROXY ;; netd) port=$NETD_PROXY ;; *) port=$ONE_PROXY ;; esac
      d=$(load 127.0.0.1:$port --mode oneway --sink 127.0.0.1:$UP --size "$size" --sockets 8 --secs "$SECS" | json delivered)
      z=$(load 127.0.0.1:$port --mode oneway --sink 127.0.0.1:$UP --size "$size" --sockets 8 \
            --search --rate 20000 --secs 1 --steps "$STEPS" --loss-ok "$LOSS_OK" | json zero_loss_rate)
      echo "delivered $who $size $d" >>"$results"
      echo "zero_loss $who $size $z" >>"$results"
      echo "round $round size $size $who: delivered $d/s, zero-loss $z/s" >&2
    done
    for who in $eorder; do
      [[ " $PARTS " == *" echo "* ]] || break
      case $who in slow) port=$ECHO_SLOW pid=$SLOW_PID ;; fast) port=$ECHO_FAST pid=$FAST_PID ;; *) port=$ECHO_ONE pid=$ONE_PID ;; esac
      t0=$(cpu_ticks "$pid")
      out=$(load 127.0.0.1:$port --mode rr --size "$size" --threads "$ECHO_THREADS" --sockets 8 --secs "$SECS")
      t1=$(cpu_ticks "$pid")
      a=$(json delivered <<<"$out")
      # netd's CPU per answer, ns: its clock ticks over the run (the
      # process does nothing else meanwhile) over the answers counted.
      echo "answered echo-$who $size $a" >>"$results"
      echo "cpu echo-$who $size $(python3 -c 'import sys; t, a, s = map(float, sys.argv[1:]); print(t / 100 * 1e9 / (a * s) if a else 0)' $((t1 - t0)) "$a" "$SECS")" >>"$results"
      echo "round $round size $size echo-$who: answered $a/s" >&2
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict
v = defaultdict(list)
for line in open(sys.argv[1]):
    m, who, size, x = line.split()
    v[(m, who, int(size))].append(float(x))
med = lambda k: statistics.median(v[k]) if v[k] else float("nan")
sizes = sorted({k[2] for k in v})
r = lambda a, b: f"{a / b:.2f}" if b else ""
ran = {k[0] for k, xs in v.items() if xs}
if "delivered" in ran:
    print("| metric (median) | size | nginx stream | netd udp-proxy | netd/nginx | netd, one socket | one socket/nginx |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m, label in (("delivered", "delivered datagrams/s (one-way, unlimited offer)"), ("zero_loss", "zero-loss rate, datagrams/s")):
        for s in sizes:
            n, d, o = med((m, "nginx", s)), med((m, "netd", s)), med((m, "netd-1sock", s))
            print(f"| {label} | {s} B | {n:.0f} | {d:.0f} | {r(d, n)} | {o:.0f} | {r(o, n)} |")
    print()
if "answered" in ran:
    print("| metric (median) | size | udp-echo, as before (one socket, no batches) | udp-echo, one socket | udp-echo | udp-echo/before | udp-echo/one socket |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for s in sizes:
        a, o, b = med(("answered", "echo-slow", s)), med(("answered", "echo-one", s)), med(("answered", "echo-fast", s))
        print(f"| answered datagrams/s (request/response) | {s} B | {a:.0f} | {o:.0f} | {b:.0f} | {r(b, a)} | {r(b, o)} |")
    for s in sizes:
        a, o, b = med(("cpu", "echo-slow", s)), med(("cpu", "echo-one", s)), med(("cpu", "echo-fast", s))
        print(f"| netd CPU per answer, ns | {s} B | {a:.0f} | {o:.0f} | {b:.0f} | {r(b, a)} | {r(b, o)} |")
    print()
print("per round:", {f"{k[0]} {k[1]} {k[2]}": [round(x) for x in xs] for k, xs in sorted(v.items()) if xs})
PY
