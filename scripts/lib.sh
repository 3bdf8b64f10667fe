# shellcheck shell=bash
# What the bench and soak scripts share: the binary built once, free ports,
# processes started in the background and stopped at the end, and waits for
# them to answer. A script sources it from the repository's root:
#
#   cd "$(dirname "$0")/.."
#   . scripts/lib.sh
#   lib_build; bin=$WS2API_BIN           # the binary given, or this checkout built
#   api_port=${API_PORT:-$(lib_port)}    # the user's port, or a free one
#   lib_start "$lib_dir/api.log" "$bin" bench api -listen "127.0.0.1:$api_port"
#   api_pid=$!
#   lib_wait_port "$api_port"
#
# It traps EXIT, INT and TERM: at the end every process still running that
# lib_start started is stopped, the last started first (a gateway before
# its API, so that its drain can deliver the DELETEs), with whatever it
# started in turn, and lib_dir is removed.

lib_dir=$(mktemp -d) # the script's scratch directory, removed at the end
lib_pids=()          # what lib_start started and no one has stopped or waited for yet
declare -gA lib_logs # each started process's log file, by pid

# lib_build leaves WS2API_BIN as it is if set, else sets it to this
# checkout's ws2api, built once; either way exports it, so that the
# scripts this one runs use the same binary.
lib_build() {
  [ -n "${WS2API_BIN:-}" ] || WS2API_BIN=$(lib_build_checkout) || return
  export WS2API_BIN
}

# lib_build_checkout prints the path of this checkout's ws2api, built once,
# whatever WS2API_BIN says.
lib_build_checkout() {
  [ -x "$lib_dir/ws2api" ] || go build -o "$lib_dir/ws2api" ./cmd/ws2api || return
  echo "$lib_dir/ws2api"
}

# lib_port prints a free TCP port on 127.0.0.1 that this script has not
# handed out yet (ports given by the user are theirs to keep apart).
lib_port() {
  local port
  while :; do
    port=$(lib_free_port) || return
    grep -qx "$port" "$lib_dir/ports" 2>/dev/null || break
  done
  echo "$port" >>"$lib_dir/ports"
  echo "$port"
}

# lib_free_port prints a TCP port on 127.0.0.1 that nothing holds, taken
# below the kernel's ephemeral range: a port in that range can be taken by
# an outgoing connection (or a connection to itself) while its server is
# down, as bench-outage's API is.
lib_free_port() {
  local lo _ p
  read -r lo _ </proc/sys/net/ipv4/ip_local_port_range || lo=32768
  [ "$lo" -gt 11000 ] || lo=32768
  for _ in $(seq 100); do
    p=$((10000 + RANDOM % (lo - 10000)))
    if command -v python3 >/dev/null; then
      python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$p" 2>/dev/null || continue
    else
      ! (: <>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || continue
    fi
    echo "$p"
    return
  done
  echo "$(basename "$0"): no free port found" >&2
  return 1
}

# lib_start LOG COMMAND [ARG...]: runs COMMAND (a program or a shell
# function) in the background with its output in the file LOG ("-": where
# the script's own goes); $! is its pid after.
lib_start() {
  local log=$1
  shift
  if [ "$log" = - ]; then
    "$@" &
  else
    "$@" >"$log" 2>&1 &
  fi
  lib_pids+=("$!")
  lib_logs[$!]=$log
}

# lib_stop PID [SIGNAL]: sends SIGNAL (TERM) to PID and to every process it
# started, and waits for PID.
lib_stop() {
  local kids
  if [ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" = $$ ]; then # still ours, not a reused pid
    kids=$(lib_descendants "$1")
    kill -"${2:-TERM}" "$1" 2>/dev/null || true
    # shellcheck disable=SC2086 # one pid a word
    [ -z "$kids" ] || kill -"${2:-TERM}" $kids 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
  lib_forget "$1"
}

# lib_wait PID: waits for PID to end by itself, with its exit status.
lib_wait() {
  local status=0
  wait "$1" || status=$?
  lib_forget "$1"
  return "$status"
}

lib_forget() {
  local p left=()
  for p in "${lib_pids[@]}"; do [ "$p" = "$1" ] || left+=("$p"); done
  lib_pids=("${left[@]}")
  unset "lib_logs[$1]"
}

# lib_descendants PID prints the pids of what PID started, and of what those
# started, and so on.
lib_descendants() {
  local kid
  for kid in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$kid"
    lib_descendants "$kid"
  done
}

# lib_wait_http URL [PATTERN]: waits up to 10 s for URL to answer with a
# 2xx (and, given PATTERN, a body with a line matching it).
lib_wait_http() {
  local body
  for _ in $(seq 100); do
    if body=$(curl -fs -m 2 "$1" 2>/dev/null) && { [ -z "${2:-}" ] || grep -q -- "$2" <<<"$body"; }; then
      return 0
    fi
    sleep 0.1
  done
  lib_fail "no answer from $1${2:+ matching $2} within 10 s"
}

# lib_wait_port PORT: waits up to 10 s for a listener on 127.0.0.1:PORT.
lib_wait_port() {
  for _ in $(seq 100); do
    (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  lib_fail "nothing listens on 127.0.0.1:$1 after 10 s"
}

# lib_fail MESSAGE: says what went wrong, with the end of each started
# process's log, and fails.
lib_fail() {
  local p
  echo "$(basename "$0"): $*" >&2
  for p in "${lib_pids[@]}"; do
    if [ "${lib_logs[$p]}" != - ] && [ -s "${lib_logs[$p]}" ]; then
      echo "--- the end of ${lib_logs[$p]}:" >&2
      tail -5 "${lib_logs[$p]}" >&2
    fi
  done
  return 1
}

lib_cleanup() {
  local i pids=("${lib_pids[@]}")
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    lib_stop "${pids[i]}"
  done
  rm -rf "$lib_dir"
}

trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
