#!/usr/bin/env bash
# A local cluster for development (`make cluster`, `make cluster-down`): a throw-away
# PostgreSQL, three tee-risk replicas in dev mode (simulated attestation, one shared sim
# platform key, one cluster identity obtained by attested join), and HAProxy in front,
# round-robin over them. Everything lives under $CLUSTER_DIR (target/cluster).
#
#   scripts/cluster.sh up         start everything; the last line is `cluster ready: <URL>`
#   scripts/cluster.sh down       stop everything it started and remove the folder
#   scripts/cluster.sh stop N     stop replica N (SIGTERM; it drains first)
#   scripts/cluster.sh kill N     SIGKILL replica N
#   scripts/cluster.sh start N    start replica N again (it re-joins from its peers)
#
# Environment: TEE_RISK_BIN (default target/release/tee-risk; `make cluster` builds it),
# CLUSTER_DIR, CLUSTER_PORT (the balancer; replicas use the next ports: +1..+3 public,
# +11..+13 operator, +20 PostgreSQL). Dev mode only: the master key is generated into the
# folder, and the replicas accept sim evidence. docs/OPERATIONS.md, "Running a cluster".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CLUSTER_DIR:-$ROOT/target/cluster}
BIN=${TEE_RISK_BIN:-$ROOT/target/release/tee-risk}
PORT=${CLUSTER_PORT:-18080}
REPLICAS=3
PG_PORT=$((PORT + 20))
# The measurement the replicas' sim reports carry, pinned by the cluster policy.
MEASUREMENT=${CLUSTER_MEASUREMENT:-$(printf 'c1%.0s' $(seq 32))}

die() { echo "cluster: $*" >&2; exit 1; }
is_root() { [[ $(id -u) == 0 ]]; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

pg_bin() {
  local dir
  dir=$(pg_config --bindir 2>/dev/null || true)
  [[ -x $dir/initdb ]] || dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x $dir/initdb ]] || die "PostgreSQL's initdb is needed: apt-get install postgresql"
  echo "$dir"
}

# PostgreSQL refuses to run as root: as root its folder belongs to `postgres`.
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

# 200 from GET /healthz at 127.0.0.1:$1 (bash's /dev/tcp: no curl needed).
healthy() {
  local answer
  answer=$(exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n' >&3 \
    && head -c 12 <&3) 2>/dev/null || return 1
  [[ $answer == "HTTP/1.0 200" || $answer == "HTTP/1.1 200" ]]
}

wait_for_line() { # file pattern seconds
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

start_pg() {
  local bin pgdir
  bin=$(pg_bin)
  # Outside the work tree: the postgres user must be able to reach it.
  pgdir=$(mktemp -d "${TMPDIR:-/tmp}/tee-risk-cluster-pg.XXXXXX")
  echo "$pgdir" >"$DIR/pg.path"
  is_root && chown postgres "$pgdir"
  as_pg "$bin/initdb" -D "$pgdir/data" -A trust -U postgres >"$DIR/pg-initdb.log" 2>&1 \
    || die "initdb failed: $DIR/pg-initdb.log"
  # TLS as in production: a throw-away CA, a server certificate for `localhost`, and the
  # replicas connect with sslmode=verify-full (docs/OPERATIONS.md, "TLS to PostgreSQL").
  local tls=$pgdir/tls ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
  mkdir -p "$tls"
  # shellcheck disable=SC2086 # $ec is several arguments
  (cd "$tls" &&
    openssl req -x509 $ec -keyout ca.key -out ca.pem -days 30 -subj /CN=tee-risk-cluster-CA &&
    openssl req $ec -keyout server.key -out server.csr -subj /CN=localhost &&
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext &&
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile server.ext -out server.pem) >"$DIR/pg-tls.log" 2>&1 || die "test CA: $DIR/pg-tls.log"
  chmod 600 "$tls/server.key"
  is_root && chown -R postgres "$tls"
  as_pg "$bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w -t 60 \
    -o "-p $PG_PORT -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=200 -c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key" start \
    >/dev/null || die "PostgreSQL did not start: $pgdir/log"
  as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres tee_risk
  echo "postgres://postgres@localhost:$PG_PORT/tee_risk?sslmode=verify-full&sslrootcert=$tls/ca.pem" \
    >"$DIR/database-url"
}

stop_pg() {
  [[ -f $DIR/pg.path ]] || return 0
  local pgdir
  pgdir=$(cat "$DIR/pg.path")
  if [[ -d $pgdir/data ]]; then
    as_pg "$(pg_bin)/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$pgdir" "$DIR/pg.path"
}

replica_config() { # n
  local n=$1 peers="" i
  for ((i = 1; i <= REPLICAS; i++)); do
    ((i == n)) || peers+="\"http://127.0.0.1:$((PORT + 10 + i))\", "
  done
  mkdir -p "$DIR/r$n"
  cat >"$DIR/r$n/config.toml" <<EOF
# Replica $n of the local dev cluster (scripts/cluster.sh).
[server]
listen = "127.0.0.1:$((PORT + n))"
operator_listen = "127.0.0.1:$((PORT + 10 + n))"
dev = true

[storage]
backend = "postgres"
# Shared by the replicas: the dev client's key and the sim platform key (no store files:
# the records are in PostgreSQL).
data_dir = "$DIR/data"

[keys]
dir = "$DIR/r$n/keys"

[attestation]
mode = "sim"
sim_measurement = "$MEASUREMENT"

[cluster]
peers = [${peers%, }]
bootstrap = $([[ $n == 1 ]] && echo true || echo false)
policy = "$DIR/cluster-policy.toml"
join_timeout_secs = 60
EOF
}

start_replica() { # n
  local n=$1
  alive "$DIR/r$n/pid" && die "replica $n is already running"
  : >"$DIR/r$n/log"
  DB_MASTER_KEY=$(cat "$DIR/master-key") \
    TEE_RISK_DATABASE_URL="$(cat "$DIR/database-url")" \
    RUST_LOG=${RUST_LOG:-info} \
    setsid "$BIN" serve --config "$DIR/r$n/config.toml" >>"$DIR/r$n/log" 2>&1 </dev/null &
  echo $! >"$DIR/r$n/pid"
  if ! wait_for_line "$DIR/r$n/log" "tee-risk listening on" 90; then
    tail -20 "$DIR/r$n/log" >&2
    die "replica $n did not start: $DIR/r$n/log"
  fi
  echo "replica $n: http://127.0.0.1:$((PORT + n)) (operator 127.0.0.1:$((PORT + 10 + n)))"
}

stop_replica() { # n signal
  local pidfile=$DIR/r$1/pid
  alive "$pidfile" || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "-$2" "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  rm -f "$pidfile"
}

start_balancer() {
  command -v haproxy >/dev/null || die "HAProxy is needed: apt-get install haproxy"
  local i
  {
    cat <<EOF
# The local cluster's balancer: round-robin over the replicas' public listeners. A request
# is retried on another replica only when it never reached one (conn-failure): a request a
# replica may have processed is never sent twice; the client sees the failure and retries.
global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
    retry-on conn-failure
frontend public
    bind 127.0.0.1:$PORT
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
EOF
    for ((i = 1; i <= REPLICAS; i++)); do
      echo "    server r$i 127.0.0.1:$((PORT + i)) check"
    done
  } >"$DIR/haproxy.cfg"
  haproxy -c -q -f "$DIR/haproxy.cfg" || die "bad HAProxy config: $DIR/haproxy.cfg"
  haproxy -D -f "$DIR/haproxy.cfg" -p "$DIR/haproxy.pid"
}

up() {
  [[ -x $BIN ]] || die "$BIN is missing: cargo build --release (make cluster does)"
  if alive "$DIR/haproxy.pid" || alive "$DIR/r1/pid"; then
    die "already up in $DIR: make cluster-down first"
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR/data"
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/master-key")
  echo "WARNING: DEVELOPMENT cluster: its DB master key is a file ($DIR/master-key) and it" \
    "accepts simulated attestation. Never put real data in it." >&2
  cat >"$DIR/cluster-policy.toml" <<EOF
# What a replica must prove to join this dev cluster, and what it checks of its peers.
allowed_tee = ["sim"]
measurements = ["$MEASUREMENT"]
# Dev-mode sim reports carry the debug flag.
allow_debug = true
max_age_secs = 60

[sim]
# Written by replica 1 at its first start; every replica shares the key (data_dir).
platform_key = "r1/keys/sim-platform.pub.pem"
EOF
  start_pg
  local n
  for ((n = 1; n <= REPLICAS; n++)); do replica_config "$n"; done
  # The first bootstraps the identity (no peer answers yet); the others join it.
  for ((n = 1; n <= REPLICAS; n++)); do start_replica "$n"; done
  start_balancer
  local deadline=$((SECONDS + 30))
  until healthy "$PORT"; do
    ((SECONDS < deadline)) || die "the balancer does not answer"
    sleep 0.2
  done
  echo "dev client key: $DIR/data/dev-client-key.hex (tee-risk client --data-dir $DIR/data)"
  echo "cluster ready: http://127.0.0.1:$PORT"
}

down() {
  if alive "$DIR/haproxy.pid"; then kill "$(cat "$DIR/haproxy.pid")" 2>/dev/null || true; fi
  local n
  for ((n = 1; n <= REPLICAS; n++)); do stop_replica "$n" TERM; done
  stop_pg
  rm -rf "$DIR"
  echo "cluster down"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  stop) stop_replica "${2:?replica number}" TERM ;;
  kill) stop_replica "${2:?replica number}" KILL ;;
  start) start_replica "${2:?replica number}" ;;
  *) die "usage: $0 up|down|stop N|kill N|start N" ;;
esac
