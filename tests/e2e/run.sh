#!/usr/bin/env bash
# The manager end to end THROUGH NGINX, on the real stack (deploy/stack: RabbitMQ, OpenSearch,
# nginx, drover-workflow, -ingest, -gateway, -provisioner, -monitor, agents as local processes):
#
#   tests/e2e/run.sh        bring a stack up on its own ports, run the four flows, bring it down
#
# 1. get_secret: secrets made through REST in a tenant reach a script operation's inputs of that
#    tenant's deployment (it writes them in a runtime property read back through the CLI; a
#    decoy of the same name in default_tenant is not read) and never its events; a missing one fails the
#    install naming it (first: it has no hosts, so no heal of the monitor's meets it);
# 2. the drover CLI: profiles use, blueprints upload, deployments create, executions start install
#    (following its events to the end), outputs, node-instances, events list, uninstall, delete;
#    the install's events must hold the workflow's own events (shipped by the replica) and the
#    agents' task events and logs (both through ingest into OpenSearch);
# 3. raw HTTP (http_flow.py, Python's standard library), over TLS (nginx's 8443 server);
# 4. Cloudify's REST client 7.0.5 (tests/cloudify/cloudify_client_flow.py) through nginx.
#
# Environment: DROVER_E2E_PORT_OFFSET [400] shifts every port of the stack (REST 8080+offset,
# RabbitMQ 5673+offset, OpenSearch 9200+offset …); DROVER_E2E_DIR [.cache/e2e] the stack's
# directory; DROVER_E2E_KEEP=1 leaves the stack up afterwards; CARGO_TARGET_DIR as for cargo
# (the stack's release binaries and drover's are built there), or DROVER_STACK_BIN: a directory
# holding every drover binary already built (e.g. a debug build), used as it is.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/common.sh"

OFFSET=${DROVER_E2E_PORT_OFFSET:-400}
export DROVER_STACK_DIR=${DROVER_E2E_DIR:-$CACHE/e2e}
export DROVER_STACK_PORT_OFFSET=$OFFSET
export DROVER_RABBITMQ_PORT=$((5673 + OFFSET))
export OPENSEARCH_PORT=$((9200 + OFFSET))
export DROVER_NGINX_HTTP_PORT=$((8080 + OFFSET))
export DROVER_NGINX_HTTPS_PORT=$((8443 + OFFSET))
export DROVER_NGINX_GRPC_PORT=$((8081 + OFFSET))
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
URL=http://127.0.0.1:$DROVER_NGINX_HTTP_PORT
TLS_URL=https://localhost:$DROVER_NGINX_HTTPS_PORT
BLUEPRINT=$ROOT/examples/hello

python_tools cloudify-common==7.0.5
if [ -n "${DROVER_STACK_BIN:-}" ]; then
  DROVER=$DROVER_STACK_BIN/drover
else
  say "building drover (release)"
  (cd "$ROOT" && cargo build --locked --release -p drover-cli --bin drover >&2)
  DROVER=$TARGET/release/drover
fi

WORK=$(mktemp -d)
cleanup() {
  local status=$?
  if [ "$status" != 0 ]; then
    say "failed; the services' logs are in $DROVER_STACK_DIR/logs"
    tail -n 20 "$DROVER_STACK_DIR"/logs/*.log 2>/dev/null | grep -iE "error|warn|==>" | tail -40 || true
  fi
  [ "${DROVER_E2E_KEEP:-}" = 1 ] || "$ROOT/deploy/stack" down || true
  rm -rf "$WORK"
}
trap cleanup EXIT
say "bringing the stack up in $DROVER_STACK_DIR (ports +$OFFSET)"
"$ROOT/deploy/stack" up

fail() { echo "FAILED: $*" >&2; exit 1; }
# listed KIND ID: whether `drover KIND list` shows ID within 5 s (lists search the OpenSearch
# store, which shows a new document after its next refresh, within a second).
listed() {
  for _ in $(seq 50); do
    cli "$1" list >"$WORK/listed.out" && grep -q "^$2 " "$WORK/listed.out" && return 0
    sleep 0.1
  done
  return 1
}
export DROVER_CONFIG_DIR=$WORK/config
cli() { "$DROVER" "$@"; }

say "1. get_secret: secrets made through REST reach an operation of their tenant, never its events"
# In a tenant of its own, with a decoy of the same name in default_tenant: the deployment
# must read its own tenant's.
TENANT=e2e_tenant
cli profiles use "$URL" -u admin -p admin -t "$TENANT"
put_secret() {
  curl -sf -u admin:admin -H "Tenant: $1" -H "Content-Type: application/json" \
    -X PUT "$URL/api/v3.1/secrets/$2" -d "$3" >/dev/null || fail "PUT /secrets/$2 in $1"
}
PASSWORD=pw-$$-$RANDOM
put_secret "$TENANT" "e2e_password_$$" "{\"value\": \"$PASSWORD\", \"update_if_exists\": true}"
put_secret default_tenant "e2e_password_$$" '{"value": "decoy", "update_if_exists": true}'
put_secret "$TENANT" "e2e_creds_$$" '{"value": "{\"users\": [\"ann\", \"bob\"]}", "update_if_exists": true}'
mkdir -p "$WORK/secret/scripts"
cat >"$WORK/secret/scripts/secret.sh" <<'SCRIPT'
#!/bin/bash
set -euo pipefail
ctx instance runtime-properties seen "$password/$user"
SCRIPT
chmod +x "$WORK/secret/scripts/secret.sh"
cat >"$WORK/secret/blueprint.yaml" <<YAML
tosca_definitions_version: cloudify_dsl_1_4
imports:
  - cloudify/types/types.yaml
inputs:
  secret:
    default: e2e_password_$$
node_templates:
  vault:
    type: cloudify.nodes.Root
    interfaces:
      cloudify.interfaces.lifecycle:
        create:
          implementation: scripts/secret.sh
          inputs:
            password: { get_secret: { get_input: secret } }
            user: { get_secret: [e2e_creds_$$, users, 1] }
YAML
SID=secret-$$
cli blueprints upload "$WORK/secret/blueprint.yaml" -b "$SID"
cli deployments create "$SID" -b "$SID"
cli executions start install -d "$SID" >"$WORK/secret-install.out" ||
  fail "install with get_secret: $(tail "$WORK/secret-install.out")"
cli node-instances list -d "$SID" >"$WORK/secret-list.out"
VAULT=$(awk 'NR > 1 && $3 == "vault" { print $1; exit }' "$WORK/secret-list.out")
cli node-instances get "$VAULT" >"$WORK/secret-get.out" 2>&1 || true
# Never `cli … | grep -q` here: under pipefail, grep -q leaving early kills the CLI with SIGPIPE
# (it dies quietly on a closed pipe, as `| head` needs) and the pipeline fails though the text
# was there — the false failures CI showed twice. The outputs go to files first.
grep -q "\"seen\": \"$PASSWORD/bob\"" "$WORK/secret-get.out" ||
  fail "the operation did not get $PASSWORD/bob: list: $(cat "$WORK/secret-list.out")
first get ($VAULT): $(cat "$WORK/secret-get.out")
second get: $(cli node-instances get "$VAULT" 2>&1)"
SEXECUTION=$(cli executions list -d "$SID" | awk '$2 == "install" { print $1 }')
cli events list -e "$SEXECUTION" >"$WORK/secret-events.out"
grep -q " task_succeeded: " "$WORK/secret-events.out" || fail "no events of the get_secret install"
if grep -q "$PASSWORD" "$WORK/secret-install.out" "$WORK/secret-events.out"; then
  fail "a secret's value shows in the install's events"
fi
cli executions start uninstall -d "$SID" >/dev/null
cli deployments delete "$SID"
cli deployments create "$SID-missing" -b "$SID" -i secret=e2e_missing_$$
if cli executions start install -d "$SID-missing" >"$WORK/missing.out" 2>&1; then
  fail "an install with a missing secret succeeded"
fi
grep -q "e2e_missing_$$" "$WORK/missing.out" || fail "the failure does not name the secret: $(tail "$WORK/missing.out")"
cli deployments delete "$SID-missing" --force
cli blueprints delete "$SID"
say "get_secret passed"

say "2. the drover CLI through nginx ($URL)"
if cli profiles use "http://127.0.0.1:9" 2>"$WORK/err"; then fail "a closed port was accepted"; fi
grep -q "cannot reach http://127.0.0.1:9/api/v3.1" "$WORK/err" || fail "unreachable: $(cat "$WORK/err")"
cli profiles use "$URL" -u admin -p admin -t default_tenant
[ "$(stat -c %a "$WORK/config/profile.json")" = 600 ] || fail "the profile is not mode 0600"
ID=cli-$$
cli blueprints upload "$BLUEPRINT/blueprint.yaml" -b "$ID"
listed blueprints "$ID" || fail "blueprints list lacks $ID"
cli deployments create "$ID" -b "$ID" -i hosts=2
listed deployments "$ID" || fail "deployments list lacks $ID"
cli executions start install -d "$ID" >"$WORK/install.out" || fail "install: $(tail "$WORK/install.out")"
for what in workflow_started sending_task task_started task_succeeded workflow_succeeded; do
  grep -q " $what: " "$WORK/install.out" || fail "the followed install shows no $what"
done
grep -qE " (INFO|WARNING|DEBUG): " "$WORK/install.out" || fail "the followed install shows no operation log"
cli executions list -d "$ID" >"$WORK/executions.out"
EXECUTION=$(awk '$2 == "install" { print $1 }' "$WORK/executions.out")
[ "$(echo "$EXECUTION" | grep -c .)" = 1 ] || fail "executions list -d $ID: not one install: $(cat "$WORK/executions.out")"
cli executions get "$EXECUTION" >"$WORK/execution.json" 2>&1 || true
grep -q '"status": "terminated"' "$WORK/execution.json" || fail "install not terminated: $(cat "$WORK/execution.json")"
cli events list -e "$EXECUTION" >"$WORK/events.out"
[ "$(grep -c ' task_succeeded: ' "$WORK/events.out")" = "$(grep -c ' task_succeeded: ' "$WORK/install.out")" ] ||
  fail "events list and the followed install disagree on task_succeeded"
cli deployments outputs "$ID" | tee "$WORK/outputs.json" >&2
python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); assert o, "no outputs"' "$WORK/outputs.json"
INSTANCE=$(cli node-instances list -d "$ID" | awk 'NR > 1 && $3 == "host" { print $1; exit }')
cli node-instances get "$INSTANCE" >"$WORK/instance.out"
grep -q '"state": "started"' "$WORK/instance.out" || fail "$INSTANCE is not started: $(cat "$WORK/instance.out")"
cli executions start uninstall -d "$ID" >"$WORK/uninstall.out" || fail "uninstall: $(tail "$WORK/uninstall.out")"
cli deployments delete "$ID"
cli blueprints delete "$ID"
if cli executions start install -d "$ID" 2>"$WORK/err"; then fail "install of a deleted deployment"; fi
grep -q "404" "$WORK/err" || fail "no 404 for a deleted deployment: $(cat "$WORK/err")"
say "the CLI flow passed"

say "3. raw HTTP over TLS through nginx ($TLS_URL)"
python3 "$ROOT/tests/e2e/http_flow.py" --url "$TLS_URL" --insecure --blueprint-dir "$BLUEPRINT"

say "4. Cloudify's REST client through nginx"
"$CACHE/venv/bin/python" "$ROOT/tests/cloudify/cloudify_client_flow.py" --host 127.0.0.1 \
  --port "$DROVER_NGINX_HTTP_PORT" --user admin --password admin \
  --blueprint-dir "$BLUEPRINT" --timeout 300

say "the end-to-end flows passed through nginx"
