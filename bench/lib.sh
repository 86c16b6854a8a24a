# bench/lib.sh: the set-up every bench script shares. Source it first:
#
#   . "$(dirname "$0")/lib.sh"
#
# It stops the script on any error (set -euo pipefail), moves to the
# repository root, makes a temporary directory $work and arranges that at
# exit every process in $pids is killed and waited for, the hooks given to
# at_exit run (in order), and $work is removed. Loopback only, every wait
# bounded. What it offers:
#
#   need CMD[=PKG]...         install the Debian packages of missing commands
#   build_release ARGS...     cargo build -q --release ARGS (binaries: $NETD,
#                             $NETCTL, $EXAMPLES/NAME)
#   at_exit 'SHELL CODE'      run at exit, after $pids are gone
#   free_port                 a free TCP port on 127.0.0.1
#   free_ports N              N distinct free ports (held together while picked)
#   wait_port PORT            until 127.0.0.1:PORT accepts (10 s, else exit 1)
#   wait_sock PATH            until a Unix socket is at PATH (10 s, else exit 1)
#   quiet_config FILE         a netd config logging warnings only
#   start_netd NAME CONFIG [PREFIX...]
#                             netd --config CONFIG in the background, run
#                             through PREFIX if given (taskset, ip netns exec):
#                             control socket $work/NAME.sock, an empty state
#                             directory $work/state-NAME (never the machine's:
#                             no run restores another's listeners), stderr
#                             in $work/NAME.log; waits for the socket; pid in
#                             $netd_pid (and $pids)
#   ctl_at NAME ARGS...       netctl against the netd started as NAME
#   stop_pid PID              kill PID and wait until it is gone (10 s)
#   bench_netns NAME          a network namespace $NS with lo up, deleted at
#                             exit; inns CMD... runs CMD in it
#   rss_kb PID                VmRSS in KiB
#   cpu_ticks PID...          utime + stime summed, in clock ticks ($HZ a second)
#   median X...               the median of numbers

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NETD=$PWD/target/release/netd
NETCTL=$PWD/target/release/netctl
EXAMPLES=$PWD/target/release/examples
HZ=$(getconf CLK_TCK)

need() {
  local missing=() c
  for c in "$@"; do
    command -v "${c%%=*}" >/dev/null || missing+=("${c#*=}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q "${missing[@]}"
  fi
}

build_release() { cargo build -q --release "$@"; }

work=$(mktemp -d)
pids=()
exit_hooks=()
at_exit() { exit_hooks+=("$1"); }
bench_cleanup() {
  local p h
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for h in "${exit_hooks[@]}"; do eval "$h" || true; done
  rm -rf "$work"
}
trap bench_cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
PY
}

# On a timeout, the logs in $work say why.
bench_gave_up() {
  echo "$1" >&2
  tail -n 20 "$work"/*.log >&2 2>/dev/null || true
  exit 1
}
wait_port() {
  local _
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done
  bench_gave_up "port $1 not up"
}
wait_sock() {
  local _
  for _ in $(seq 200); do [ -S "$1" ] && return; sleep 0.05; done
  bench_gave_up "no socket $1"
}

# nginx_json_upstream PORT: an nginx on 127.0.0.1:PORT answering {"ok":true}
# to every request, keep-alive, a worker per core (config and pid in
# $work/up); the upstream of the HTTP proxy benchmarks.
nginx_json_upstream() {
  mkdir -p "$work/up"
  cat > "$work/up/nginx.conf" <<CFG
worker_processes $(nproc);
pid $work/up/nginx.pid;
error_log $work/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$1;
    location / { default_type application/json; return 200 '{"ok":true}'; }
  }
}
CFG
  nginx -c "$work/up/nginx.conf" -g 'daemon off;' & pids+=($!)
}

quiet_config() { printf '[log]\nlevel = "warn"\n' > "$1"; }

start_netd() {
  local name=$1 config=$2
  shift 2
  rm -rf "$work/$name.sock" "$work/state-$name"
  NETD_CONTROL="unix:$work/$name.sock" NETD_STATE_DIR="$work/state-$name" \
    "$@" "$NETD" --config "$config" 2>"$work/$name.log" &
  netd_pid=$!
  pids+=("$netd_pid")
  wait_sock "$work/$name.sock"
}
ctl_at() {
  local name=$1
  shift
  "$NETCTL" --control "unix:$work/$name.sock" "$@"
}

stop_pid() {
  local _ p keep=()
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true  # reaps it if it is our child
  for _ in $(seq 200); do
    if [ ! -e "/proc/$1" ]; then
      for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
      pids=("${keep[@]}")
      return 0
    fi
    sleep 0.05
  done
  bench_gave_up "process $1 did not exit"
}

bench_netns() {
  NS=$1
  ip netns add "$NS"
  at_exit "ip netns del '$NS' 2>/dev/null"
  ip -n "$NS" link set lo up
}
inns() { ip netns exec "$NS" "$@"; }

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() {
  local t=0 p f
  for p in "$@"; do
    read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat")
    t=$((t + f[11] + f[12]))
  done
  echo "$t"
}
median() { python3 -c 'import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))' "$@"; }
