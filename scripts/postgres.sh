#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for tests, on a free loopback port:
# password authentication for every role but the superuser.
#   scripts/postgres.sh start DIR   initdb + start; writes DIR/pg.port
#   scripts/postgres.sh stop DIR
set -euo pipefail
bin=/usr/lib/postgresql/15/bin
here="$(cd "$(dirname "$0")" && pwd)"
as_pg() {
  # initdb and postgres refuse to run as root.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
start() {
  local dir="$1"; mkdir -p "$dir/pg"; chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir/pg"
  local port; port="$(python3 "$here/local-cloud/free_port.py")"
  as_pg "$bin/initdb" -D "$dir/pg/data" -U postgres --auth=trust -E UTF8 --locale=C >"$dir/pg/initdb.log" 2>&1
  # The superuser connects without a password (the tests' admin knob);
  # every other role must give its password, as on RDS and Cloud SQL, so a
  # wrong or rotated-away password is refused.
  cat >"$dir/pg/data/pg_hba.conf" <<HBA
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
HBA
  # TLS as on RDS and Cloud SQL (a self-signed certificate: clients that
  # require TLS get it, none can verify it).
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=local-postgres \
    -keyout "$dir/pg/data/server.key" -out "$dir/pg/data/server.crt" >/dev/null 2>&1
  chmod 600 "$dir/pg/data/server.key"
  [ "$(id -u)" = 0 ] && chown postgres "$dir/pg/data/server.key" "$dir/pg/data/server.crt"
  as_pg "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w \
    -o "-p $port -k $dir/pg -c ssl=on -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements -c fsync=off" start >/dev/null
  echo "$port" >"$dir/pg.port"
  echo "postgres listening on 127.0.0.1:$port" >&2
}
stop() {
  local dir="$1"
  [ -d "$dir/pg/data" ] && as_pg "$bin/pg_ctl" -D "$dir/pg/data" -m fast stop >/dev/null 2>&1 || true
}
case "${1:-}" in
  start) start "${2:?dir}" ;;
  stop) stop "${2:?dir}" ;;
  *) echo "usage: $0 start DIR|stop DIR" >&2; exit 2 ;;
esac
