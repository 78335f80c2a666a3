#!/usr/bin/env bash
# The scale and chaos test of the whole manager (issue 9), against a stack of its own: starts
# `deploy/stack up --replicas R --cloud cloudsim` on ports apart from a user's stack (RabbitMQ
# 5686, OpenSearch 9286, nginx 8680/8643/8681, services +600), with a hollow central agent;
# generates ../shared/bench/gen_blueprint.py HOSTS APPS (default 100 100: 10,101 instances) with
# the hosts' create and delete removed, so that every Compute instance is provisioned in cloudsim
# by the provisioners; then tests/stack/scale.py: a clean install and uninstall through nginx
# (wall times, peak RSS of each service, messages/s), then one under chaos (kill -9 of a replica
# of each service in turn and a RabbitMQ restart during the install: duplicates, leaks, lost
# events, double runs). Stops the stack at the end if it started it.
#
#   tests/stack/run.sh [clean|chaos|both]   (default both)
#
# Prints the figures as JSON lines on stdout; exit 1 when a check failed. It takes minutes and
# needs release binaries (built by deploy/stack when missing): not part of scripts/test.
# Environment: STACK_TEST_HOSTS [100], STACK_TEST_APPS [100], STACK_TEST_REPLICAS [2],
# STACK_TEST_WARMUP [0] (1: a clean run before the clean run, its figures named warmup_…: the
# first install after the stack started, its JVM and caches cold), and deploy/stack's
# (DROVER_STACK_BIN …); DROVER_STACK_DIR [.cache/stack-test].
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
MODE=${1:-both}
HOSTS=${STACK_TEST_HOSTS:-100}
APPS=${STACK_TEST_APPS:-100}
REPLICAS=${STACK_TEST_REPLICAS:-2}
export DROVER_STACK_DIR=${DROVER_STACK_DIR:-$ROOT/.cache/stack-test}
export DROVER_RABBITMQ_PORT=${DROVER_RABBITMQ_PORT:-5686}
# deploy/stack's default, spelled out for scale.py's RabbitMQ restart.
export DROVER_RABBITMQ_DIR=${DROVER_RABBITMQ_DIR:-$DROVER_STACK_DIR/rabbitmq}
export OPENSEARCH_PORT=${OPENSEARCH_PORT:-9286}
export DROVER_NGINX_HTTP_PORT=${DROVER_NGINX_HTTP_PORT:-8680}
export DROVER_NGINX_HTTPS_PORT=${DROVER_NGINX_HTTPS_PORT:-8643}
export DROVER_NGINX_GRPC_PORT=${DROVER_NGINX_GRPC_PORT:-8681}
export DROVER_STACK_PORT_OFFSET=${DROVER_STACK_PORT_OFFSET:-600}
export DROVER_STACK_HOLLOW_CENTRAL=1
case $MODE in clean | chaos | both) ;; *) sed -n '2,17s/^# \{0,1\}//p' "$0" >&2; exit 2 ;; esac

started=0
deploy/stack status >/dev/null 2>&1 || started=1
work=$(mktemp -d)
cleanup() {
  rm -rf "$work"
  if [ "$started" = 1 ]; then deploy/stack down >&2; fi
}
trap cleanup EXIT
deploy/stack up --replicas "$REPLICAS" --cloud cloudsim >&2

python3 "$ROOT/../shared/bench/gen_blueprint.py" "$HOSTS" "$APPS" "$work/blueprint"
cp "$ROOT/../shared/bench/types.yaml" "$work/blueprint/"
# The hosts lose their own create and delete: a Compute node without them is provisioned.
python3 - "$work/blueprint/blueprint.yaml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
head, rest = text.split("\n  host:\n", 1)
host, tail = rest.split("\n  app:\n", 1)
host = re.sub(r"\n +(create|delete): peer\.peer_ops\.noop", "", host)
open(path, "w").write(head + "\n  host:\n" + host + "\n  app:\n" + tail)
PY

scale() {
  python3 tests/stack/scale.py --url "http://127.0.0.1:$DROVER_NGINX_HTTP_PORT" \
    --blueprint-dir "$work/blueprint" \
    --cloudsim "http://127.0.0.1:$((8770 + DROVER_STACK_PORT_OFFSET))" \
    --opensearch "http://127.0.0.1:$OPENSEARCH_PORT" --stack deploy/stack \
    --rabbitmq scripts/rabbitmq --replicas "$REPLICAS" --instances $((HOSTS * APPS + HOSTS + 1)) "$@"
}
status=0
expect=()
if [ "$MODE" != chaos ]; then
  # A warm-up run first, when asked: its figures are a freshly started manager's (warmup_…).
  if [ "${STACK_TEST_WARMUP:-0}" = 1 ]; then scale --prefix warmup || status=1; fi
  scale | tee "$work/clean.json" || status=1
  # The chaos run must show as many operations as the clean one.
  ops=$(sed -n 's/.*"stack_install_operations", "value": \([0-9]*\).*/\1/p' "$work/clean.json")
  if [ -n "$ops" ]; then expect=(--expect-install-operations "$ops"); fi
fi
if [ "$MODE" != clean ]; then scale --chaos "${expect[@]}" || status=1; fi
exit "$status"
