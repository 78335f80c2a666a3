#!/usr/bin/env bash
# Cloudify's own Python REST client (cloudify-common 7.0.5) and schemathesis against a real
# drover-gateway process:
#
#   tests/cloudify/run.sh            build the gateway, start it, run both, stop it
#
# 1. cloudify_client_flow.py twice: basic auth + blueprints.upload, then a token +
#    publish_archive. Upload, deploy, install, wait, node instances, events, runtime-property
#    update with version check, outputs, uninstall, delete.
# 2. schemathesis against /api/v3.1/openapi.json: no 5xx (check not_a_server_error).
#
# The same client flow runs against the real stack through nginx in tests/e2e/run.sh; this one
# stays for schemathesis, whose random requests want a gateway of their own, and as a fast check.
# The gateway runs on a file store in a fresh temporary directory. With DROVER_WORKFLOW_GRPC
# set it calls that workflow service; without it executions run inside the gateway in dry-run
# (no operation runs). Settings: DROVER_GATEWAY_TEST_PORT (default 18100),
# DROVER_SCHEMATHESIS_EXAMPLES (default 30 per operation), CARGO_TARGET_DIR.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/common.sh"

PORT=${DROVER_GATEWAY_TEST_PORT:-18100}
EXAMPLES=${DROVER_SCHEMATHESIS_EXAMPLES:-30}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

python_tools cloudify-common==7.0.5 schemathesis==4.32.5
PY=$CACHE/venv/bin/python

# DROVER_STACK_BIN: a directory with a drover-gateway already built (scripts/test passes the one
# its cargo test built); otherwise it is built here.
if [ -z "${DROVER_STACK_BIN:-}" ]; then
  say "building drover-gateway"
  (cd "$ROOT" && cargo build --locked -p drover-gateway --bin drover-gateway)
fi
GATEWAY_BIN=${DROVER_STACK_BIN:-$TARGET/debug}/drover-gateway

WORK=$(mktemp -d)
GATEWAY_PID=
cleanup() {
  if [ -n "$GATEWAY_PID" ]; then kill "$GATEWAY_PID" 2>/dev/null; wait "$GATEWAY_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

say "starting drover-gateway on 127.0.0.1:$PORT${DROVER_WORKFLOW_GRPC:+ (workflow service $DROVER_WORKFLOW_GRPC)}"
DROVER_ADMIN_PASSWORD=admin RUST_LOG=${RUST_LOG:-warn} "$GATEWAY_BIN" \
  --listen "127.0.0.1:$PORT" --store "file:$WORK/state" --data-dir "$WORK/data" \
  >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$GATEWAY_PID" 2>/dev/null || { cat "$WORK/gateway.log"; exit 1; }
  sleep 0.1
done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null

FLOW=("$PY" "$ROOT/tests/cloudify/cloudify_client_flow.py" --host 127.0.0.1 --port "$PORT"
  --user admin --password admin --blueprint-dir "$ROOT/examples/hello" --timeout 120)
say "Cloudify REST client: basic auth, blueprints.upload"
"${FLOW[@]}"
say "Cloudify REST client: token, publish_archive"
"${FLOW[@]}" --use-token --upload-mode archive

say "schemathesis: $EXAMPLES examples per operation, no 5xx"
"$CACHE/venv/bin/schemathesis" run "http://127.0.0.1:$PORT/api/v3.1/openapi.json" \
  --checks not_a_server_error --max-examples "$EXAMPLES" --seed 8 \
  -H "Authorization: Basic $(printf admin:admin | base64)" --no-color \
  --report-dir "$WORK/schemathesis" \
  || { echo "gateway log:"; tail -50 "$WORK/gateway.log"; exit 1; }
if grep -q " ERROR " "$WORK/gateway.log"; then
  echo "the gateway logged errors:"; grep " ERROR " "$WORK/gateway.log" | head -20; exit 1
fi
say "Cloudify client flow and schemathesis passed"
