#!/usr/bin/env bash
# A private Redis for tests, on a free loopback port, with a password the way
# ElastiCache's AUTH token works (every client must AUTH before any command).
#   scripts/redis.sh start DIR   writes DIR/redis.port and DIR/redis.password
#   scripts/redis.sh stop DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
start() {
  local dir="$1"; mkdir -p "$dir/redis"
  local port; port="$(python3 "$here/local-cloud/free_port.py")"
  local password; password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  umask 077
  printf '%s' "$password" >"$dir/redis.password"
  cat >"$dir/redis/redis.conf" <<CONF
bind 127.0.0.1
port $port
requirepass $password
daemonize yes
pidfile $dir/redis/redis.pid
logfile $dir/redis/redis.log
dir $dir/redis
save ""
appendonly no
CONF
  redis-server "$dir/redis/redis.conf"
  for _ in $(seq 1 100); do
    REDISCLI_AUTH="$password" redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  echo "$port" >"$dir/redis.port"
  echo "redis listening on 127.0.0.1:$port" >&2
}
stop() {
  local dir="$1"
  if [ -f "$dir/redis/redis.pid" ]; then
    kill "$(cat "$dir/redis/redis.pid")" 2>/dev/null || true
    rm -f "$dir/redis/redis.pid"
  fi
}
case "${1:-}" in
  start) start "${2:?dir}" ;;
  stop) stop "${2:?dir}" ;;
  *) echo "usage: $0 start DIR|stop DIR" >&2; exit 2 ;;
esac
