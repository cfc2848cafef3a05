# Shared by the fan-out benchmarks (sourced, not run).

# `[N ...] [SECONDS]`: with two or more numbers the last is SECONDS. Sets the
# arrays/values `sizes` and `secs`, keeping the caller's defaults otherwise.
#   parse_sizes_and_secs "$@"
parse_sizes_and_secs() {
  if [ $# -ge 2 ]; then
    secs=${*: -1}
    sizes=("${@:1:$#-1}")
  elif [ $# -eq 1 ]; then
    sizes=("$1")
  fi
}

# A fresh release confer on free loopback ports, pinned to CPUS, its data in
# DATA; logs in $work. Sets `server_pid` and `server_url` (host:port).
#   start_confer CPUS DATA
start_confer() {
  local cpus=$1 data=$2
  CONFER_ROOMS_MAX_PARTICIPANTS=1000 CONFER_MEDIA_LISTEN=127.0.0.1:0 CONFER_TURN_LISTEN=127.0.0.1:0 RUST_LOG=${SERVER_LOG:-warn} \
    taskset -c "$cpus" "$bin" serve --http 127.0.0.1:0 --data "$data" > "$work/serve.out" 2> "$work/serve.log" &
  server_pid=$!
  server_url=""
  for _ in $(seq 100); do
    server_url=$(grep -o 'http=[0-9.:]*' "$work/serve.out" 2>/dev/null | cut -d= -f2) && [ -n "$server_url" ] && break
    sleep 0.1
  done
  [ -n "$server_url" ] || { echo "the server did not start" >&2; cat "$work/serve.log" >&2; exit 1; }
}
