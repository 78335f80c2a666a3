#!/usr/bin/env bash
# deploy/stack itself, quickly (scripts/test runs it): up with 2 replicas, status, the REST API
# through nginx, a replica killed (-9) shows down and a second `up` starts only it again, down
# leaves none of the stack's processes. Runs on ports apart from a user's stack (nginx
# 8780/8743/8781, services +700) with the binaries of DROVER_STACK_BIN (default: the debug
# build, made if missing) and the RabbitMQ and OpenSearch nodes of the caller's environment
# (started, and stopped at the end, if they were not running).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export DROVER_STACK_DIR=${DROVER_STACK_DIR:-$ROOT/.cache/stack-smoke}
# Binaries the caller names (scripts/test passes the ones its cargo test built) are used as they
# are; otherwise the debug ones are built here.
build_bins=${DROVER_STACK_BIN:+no}
export DROVER_STACK_BIN=${DROVER_STACK_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
export DROVER_RABBITMQ_DIR=${DROVER_RABBITMQ_DIR:-$ROOT/.cache/rabbitmq}
export DROVER_OPENSEARCH_DIR=${DROVER_OPENSEARCH_DIR:-$ROOT/.cache/opensearch}
export DROVER_NGINX_HTTP_PORT=${DROVER_NGINX_HTTP_PORT:-8780}
export DROVER_NGINX_HTTPS_PORT=${DROVER_NGINX_HTTPS_PORT:-8743}
export DROVER_NGINX_GRPC_PORT=${DROVER_NGINX_GRPC_PORT:-8781}
export DROVER_STACK_PORT_OFFSET=${DROVER_STACK_PORT_OFFSET:-700}

fail() {
  echo "FAILED: $*" >&2
  exit 1
}

if [ "$build_bins" != no ]; then
  cargo build -q -p drover-workflow -p drover-provisioning -p drover-ingest -p drover-monitor \
    -p drover-gateway -p drover-agent -p drover-cloudsim --bins
fi
trap 'deploy/stack down >/dev/null 2>&1 || true' EXIT
deploy/stack up --replicas 2 --cloud sim
deploy/stack status || fail "status after up"
url=$(deploy/stack url)
curl -fsS -u admin:admin -H 'Tenant: default_tenant' "$url/status" >/dev/null ||
  fail "GET $url/status through nginx"

victim=$(deploy/stack pid workflow-1)
kill -9 "$victim"
while kill -0 "$victim" 2>/dev/null; do sleep 0.1; done
if deploy/stack status >/dev/null; then fail "status says all is well with workflow-1 killed"; fi
others=$(deploy/stack pid workflow-0)
up=$(deploy/stack up --replicas 2 --cloud sim)
grep -q "started workflow-1" <<<"$up" || fail "the second up did not start workflow-1: $up"
[ "$(grep -c '^stack: started' <<<"$up")" = 1 ] || fail "the second up started more than workflow-1: $up"
[ "$(deploy/stack pid workflow-0)" = "$others" ] || fail "the second up restarted workflow-0"
deploy/stack status >/dev/null || fail "status after the second up"

pids=$(cat "$DROVER_STACK_DIR"/run/*.pid)
deploy/stack down
for pid in $pids; do
  if kill -0 "$pid" 2>/dev/null; then fail "pid $pid still runs after down"; fi
done
echo "stack smoke: ok"
