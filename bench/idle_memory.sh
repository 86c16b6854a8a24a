#!/usr/bin/env bash
# Resident memory per idle connection: netd's TCP echo, and netd's TCP proxy
# against HAProxy (Debian's haproxy, mode tcp) in front of the same upstream.
# Loopback only, bounded (ROUNDS × message sizes × N connections).
#
# Method, per round and per message size: a fresh daemon (so no freed heap
# from an earlier round is waiting to be reused), one warm-up exchange, VmRSS;
# then N clients connect one after the other, each sends MSG bytes, reads
# them all back and stays open, idle; one second later VmRSS again. The
# figure is (after - before) / N; the table shows the median of the rounds
# (min-max beside it). Because each connection has exchanged a typical
# message before going idle, whatever it keeps (task, buffers, buffers
# freed but stranded in the allocator) is counted; a buffer returned and
# reused by the next connection is not.
#
# BATCH=100 opens the connections 100 at a time instead, so many exchanges
# are in flight together: what that adds over one-by-one is memory freed
# during the burst but kept resident by the allocator (before netd mapped
# its 64 KiB proxy buffers with mmap, 0.5-1.5 KB per pair), not a cost each
# idle connection holds.
#
#   bench/idle_memory.sh        # N=1000 ROUNDS=5 SIZES="1 12288" BATCH=1 by default
. "$(dirname "$0")/lib.sh"
N=${N:-1000}
ROUNDS=${ROUNDS:-5}
SIZES=${SIZES:-"1 12288"}
BATCH=${BATCH:-1}

need haproxy
build_release --bin netd --bin netctl
ulimit -n "$(ulimit -Hn)"

# The clients: python, one connection at a time (connect, send MSG, read MSG
# back), then "ready" and hold everything open until stdin closes (at most
# 120 s).
cat > "$work/hold.py" <<'PY'
import select, socket, sys
port, n, size, burst = (int(a) for a in sys.argv[1:5])
msg = b"x" * size
def exchange():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(msg)
    got = 0
    while got < size:
        b = s.recv(65536)
        if not b:
            raise SystemExit(f"connection closed after {got} of {size} bytes")
        got += len(b)
    return s
exchange().close()  # warm-up
print("warm", flush=True)
sys.stdin.readline()
held = []
while len(held) < n:
    # BATCH connections at once: all connect and send, then all read back.
    batch = []
    for _ in range(min(burst, n - len(held))):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        batch.append(s)
    for s in batch:
        s.sendall(msg)
    for s in batch:
        got = 0
        while got < size:
            b = s.recv(65536)
            if not b:
                raise SystemExit(f"connection closed after {got} of {size} bytes")
            got += len(b)
    held += batch
print(f"ready {len(held)}", flush=True)
select.select([sys.stdin], [], [], 120)
PY

quiet_config "$work/quiet.toml"

# bytes per connection on PID's listener at PORT, MSG bytes exchanged each
measure() { # pid port msg
  local before after line
  coproc HOLD { python3 "$work/hold.py" "$2" "$N" "$3" "$BATCH"; }
  read -r line <&"${HOLD[0]}"
  [ "$line" = warm ] || { echo "warm-up failed: '$line'" >&2; exit 1; }
  sleep 0.5
  before=$(rss_kb "$1")
  echo go >&"${HOLD[1]}"
  read -r line <&"${HOLD[0]}"
  [ "$line" = "ready $N" ] || { echo "only got '$line' of $N idle connections" >&2; exit 1; }
  sleep 1
  after=$(rss_kb "$1")
  exec {HOLD[1]}>&-
  wait "$HOLD_PID" 2>/dev/null || true
  echo $(( (after - before) * 1024 / N ))
}

# Each daemon is stopped and gone (stop_pid) before the next one starts:
# an old netd still exiting would otherwise remove the control socket of
# the next one, started under the same name.

# The proxies' upstream: a netd TCP echo of its own, kept for the whole run.
start_netd up "$work/quiet.toml"
UP=$(free_port)
ctl_at up start tcp-echo up --listen "127.0.0.1:$UP" --max-connections 100000 >/dev/null

declare -A res
for size in $SIZES; do
  for round in $(seq "$ROUNDS"); do
    # netd TCP echo
    start_netd echo "$work/quiet.toml"; pid=$netd_pid; port=$(free_port)
    ctl_at echo start tcp-echo e --listen "127.0.0.1:$port" --max-connections 100000 >/dev/null
    res[echo,$size]+="$(measure "$pid" "$port" "$size") "
    stop_pid "$pid"
    # netd proxy
    start_netd px "$work/quiet.toml"; pid=$netd_pid; port=$(free_port)
    ctl_at px start proxy p --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UP" --max-connections 100000 >/dev/null
    res[proxy,$size]+="$(measure "$pid" "$port" "$size") "
    stop_pid "$pid"
    # HAProxy, configured as in bench/proxy_bench.sh
    port=$(free_port)
    cat > "$work/haproxy.cfg" <<CFG
global
  maxconn $((N * 2 + 100))
  nbthread $(nproc)
defaults
  mode tcp
  timeout connect 5s
  timeout client 5m
  timeout server 5m
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
  server s1 127.0.0.1:$UP
CFG
    haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" & pid=$!
    wait_port "$port"
    res[haproxy,$size]+="$(measure "$pid" "$port" "$size") "
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "msg ${size} B, round $round: echo/proxy/haproxy so far: ${res[echo,$size]}| ${res[proxy,$size]}| ${res[haproxy,$size]}" >&2
  done
done

args=()
for size in $SIZES; do args+=("$size" "${res[echo,$size]}" "${res[proxy,$size]}" "${res[haproxy,$size]}"); done
python3 - "$N" "$ROUNDS" "$BATCH" "${args[@]}" <<'PY'
import statistics, sys
n, rounds, batch, rest = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
def cell(s):
    v = [int(x) for x in s.split()]
    return f"{statistics.median(v):.0f} ({min(v)}-{max(v)})"
how = "one by one" if batch == 1 else f"{batch} at a time (all connect and send, then all read)"
print(f"RSS per idle connection, bytes: {n} connections opened {how} on a fresh daemon,")
print(f"each exchanging one message then idle; median of {rounds} rounds (min-max)")
print("| message | netd TCP echo, per connection | netd proxy, per proxied pair | HAProxy 2.6, per proxied pair | netd/HAProxy |")
print("| --- | --- | --- | --- | --- |")
for i in range(0, len(rest), 4):
    size, e, p, h = rest[i:i + 4]
    mp = statistics.median(int(x) for x in p.split())
    mh = statistics.median(int(x) for x in h.split())
    print(f"| {int(size):,} B | {cell(e)} | {cell(p)} | {cell(h)} | {mp / mh:.2f} |")
PY
