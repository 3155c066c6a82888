#!/usr/bin/env bash
# Makes sure the backing services the test suite talks to are running on this machine,
# starting any that are stopped, and fails loudly if one cannot be reached.
#
#   scripts/services.sh            PostgreSQL, RabbitMQ, NATS JetStream, Kafka and Redis (what the tests need)
#   scripts/services.sh all        the same
#   scripts/services.sh postgres   one service (postgres, rabbitmq, nats, kafka or redis)
#
# Addresses can be overridden with MERIDIAN_TEST_DATABASE_URL's host/port defaults
# (127.0.0.1:5432). The servers come from the OS packages, except the Kafka-protocol broker
# `tansu`, which Debian does not package: it is built from crates.io once per machine.
set -euo pipefail

want="${1:-tests}"

log() { printf 'services: %s\n' "$*" >&2; }

# Installs a Debian package when its server binary is missing (a fresh machine).
need_package() { # binary package
  command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] && return 0
  log "$2 is not installed; installing it from the OS packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port name
  for _ in $(seq 1 60); do
    port_open "$1" "$2" && return 0
    sleep 0.5
  done
  log "ERROR: $3 is not reachable on $1:$2 after 30 s"
  return 1
}

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
    log "PostgreSQL is up on 127.0.0.1:5432"
  else
    log "starting PostgreSQL"
    if ! command -v pg_ctlcluster >/dev/null; then
      log "PostgreSQL is not installed; installing it from the OS packages"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    wait_port 127.0.0.1 5432 PostgreSQL
  fi
  # The tests connect as postgres to the database `test`; create it if it is missing.
  if ! psql -h 127.0.0.1 -U postgres -d test -Atqc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test' >/dev/null 2>&1 || true
  fi
  psql -h 127.0.0.1 -U postgres -d test -Atqc 'select 1' >/dev/null \
    || { log "ERROR: cannot connect to PostgreSQL database test as postgres"; exit 1; }
}

ensure_redis() {
  port_open 127.0.0.1 6379 && { log "Redis is up"; return; }
  log "starting Redis"
  need_package redis-server redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 127.0.0.1 6379 Redis
}

ensure_rabbitmq() {
  port_open 127.0.0.1 5672 && { log "RabbitMQ is up"; return; }
  log "starting RabbitMQ"
  need_package rabbitmq-server rabbitmq-server
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 127.0.0.1 5672 RabbitMQ
}

ensure_nats() {
  port_open 127.0.0.1 4222 && { log "NATS is up"; return; }
  log "starting NATS with JetStream"
  need_package /usr/sbin/nats-server nats-server
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server
  wait_port 127.0.0.1 4222 NATS
}

# Kafka protocol: the `tansu` broker (Debian packages no Kafka), in memory, on 127.0.0.1:19092.
# Built once per machine with cargo (13 to 40 minutes on two cores); later runs reuse it.
# The build has the in-memory (`dynostore`) and the PostgreSQL storage engines: the shared
# broker runs in memory; the Kafka tests start private brokers on PostgreSQL to restart
# them. It goes into a directory of its own, where the tests look for it too.
TANSU_VERSION=0.6.0
ensure_kafka() {
  port_open 127.0.0.1 19092 && { log "Kafka (tansu) is up"; return; }
  local root="${CARGO_HOME:-$HOME/.cargo}/tansu-$TANSU_VERSION-pg"
  local tansu="$root/bin/tansu"
  if [ ! -x "$tansu" ]; then
    log "tansu $TANSU_VERSION is not installed; building it with cargo (13 to 40 minutes, once per machine)"
    # A test broker needs no full optimisation: opt-level 1 without LTO builds in about
    # half the CPU time.
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
      CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=false \
      cargo install "tansu@$TANSU_VERSION" --locked --features dynostore,postgres --root "$root" \
      >/tmp/tansu-install.log 2>&1 \
      || { log "ERROR: cargo install tansu failed; see /tmp/tansu-install.log"; exit 1; }
  fi
  log "starting Kafka (tansu) on 127.0.0.1:19092, log in /tmp/tansu.log"
  setsid nohup "$tansu" broker \
    --listener-url tcp://127.0.0.1:19092 \
    --advertised-listener-url tcp://127.0.0.1:19092 \
    --storage-engine memory://tansu/ >/tmp/tansu.log 2>&1 < /dev/null &
  wait_port 127.0.0.1 19092 "Kafka (tansu)"
}

case "$want" in
  tests)
    ensure_postgres; ensure_rabbitmq; ensure_nats; ensure_kafka; ensure_redis
    # The Python plugin SDK's tests run the reference plugin under python3.
    need_package python3 python3 ;;
  all) ensure_postgres; ensure_rabbitmq; ensure_nats; ensure_kafka; ensure_redis ;;
  postgres) ensure_postgres ;;
  rabbitmq) ensure_rabbitmq ;;
  nats) ensure_nats ;;
  kafka) ensure_kafka ;;
  redis) ensure_redis ;;
  *) log "usage: $0 [tests|all|postgres|rabbitmq|nats|kafka|redis]"; exit 2 ;;
esac
