#!/usr/bin/env python3
"""The manager at scale, end to end, against a running `deploy/stack` (cloud: cloudsim): a
blueprint uploaded through nginx and the gateway, a deployment, install and uninstall run by the
workflow replicas, Compute servers made by the provisioners in drover-cloudsim, every other
operation answered by the hollow central agent, events through ingest into OpenSearch.

    scale.py --url http://127.0.0.1:8080 --blueprint-dir DIR --cloudsim URL --opensearch URL
             [--chaos] [--stack deploy/stack] [--replicas N]

With --chaos, during the install: kill -9 one replica of each service in turn (each workflow
replica, so the one running the execution is among them), `deploy/stack up` starting each again,
and RabbitMQ restarted once. Then the checks: the install and the uninstall end `terminated`;
cloudsim made no duplicate server and none is left after the uninstall; every operation's
task_succeeded event is indexed (events are indexed by id, so none can be indexed twice; with
--expect-install-operations, as many operations as a clean run's); every instance's six state
events of the install are indexed, and no state event twice; no
operation ran under two attempts (a re-run: the hollow agent never fails, so every operation
needs exactly one).

Prints one JSON object a line on stdout (the figures); progress on stderr. Exit 1 when a check
failed, after printing what was measured.
"""

import argparse
import base64
import io
import json
import os
import queue
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid

SERVICES = ["workflow", "provisioner", "ingest", "monitor", "gateway"]


def log(message):
    print(f"scale: {message}", file=sys.stderr, flush=True)


def http(method, url, body=None, headers=None, timeout=60):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Manager:
    """The REST API through nginx; a call is retried while no gateway answers (chaos)."""

    def __init__(self, url, user, password):
        self.base = url.rstrip("/") + "/api/v3.1"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Tenant": "default_tenant"}

    def call(self, method, path, body=None, raw=None):
        headers = dict(self.headers)
        data = None
        if raw is not None:
            data, headers["Content-Type"] = raw, "application/octet-stream"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        deadline = time.monotonic() + 120
        while True:
            try:
                status, text = http(method, self.base + path, data, headers)
            except OSError as e:
                status, text = 0, str(e).encode()
            if status in (200, 201, 204):
                return json.loads(text) if text else None
            if status not in (0, 502, 503, 504) or time.monotonic() > deadline:
                raise SystemExit(f"FAILED: {method} {path}: {status} {text[:500]!r}")
            time.sleep(0.5)


def archive(directory):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        tar.add(directory, arcname="blueprint")
    return out.getvalue()


def run_workflow(manager, deployment, workflow):
    """Starts `workflow` and waits for its end: (execution id, status, seconds)."""
    start = time.monotonic()
    execution = manager.call(
        "POST", "/executions", {"deployment_id": deployment, "workflow_id": workflow}
    )
    while True:
        current = manager.call("GET", f"/executions/{execution['id']}")
        if current["status"] in ("terminated", "failed", "cancelled"):
            return execution["id"], current["status"], time.monotonic() - start
        time.sleep(0.2)


def stack(args, *command):
    return subprocess.run([args.stack, *command], capture_output=True, text=True, check=False)


def pid(args, name):
    out = stack(args, "pid", name)
    return int(out.stdout) if out.returncode == 0 and out.stdout.strip() else None


def peak_rss_mib(p):
    try:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def chaos(args, done, record):
    """Kills each replica in turn while the install runs, and restarts RabbitMQ once. A killed
    replica is started again (`deploy/stack up`) in the background, one start at a time, so the
    steps keep their pace however long a start takes (a warm stack installs in seconds). The
    RabbitMQ restart, and the kill of the second workflow replica, wait until every replica
    killed before is back: `deploy/stack up` would start a broker being restarted, and with
    both workflow replicas down the install would only wait."""
    victims = [f"workflow-{i}" for i in range(args.replicas)]
    victims[1:1] = [f"{s}-0" for s in SERVICES if s != "workflow"]
    steps = victims[:]
    steps.insert(len(steps) // 2, "rabbitmq")
    restarts = queue.Queue()

    def restarter():
        while (step := restarts.get()) is not None:
            # A start fails when the next kill hits a replica it is waiting for: tried again.
            for _ in range(3):
                out = stack(args, "up", "--replicas", str(args.replicas), "--cloud", "cloudsim")
                if out.returncode == 0:
                    break
            else:
                record.append(f"restart after {step} failed: {out.stderr[-500:]}")
            restarts.task_done()

    thread = threading.Thread(target=restarter)
    thread.start()
    try:
        for step in steps:
            if step == "rabbitmq" or (step.startswith("workflow-") and step != victims[0]):
                restarts.join()
            if done.wait(args.chaos_interval_s):
                record.append(f"install ended before {step}")
                return
            if step == "rabbitmq":
                log("chaos: restarting RabbitMQ")
                out = subprocess.run([args.rabbitmq, "restart"], capture_output=True, text=True)
                record.append(f"rabbitmq restart: exit {out.returncode}")
            else:
                p = pid(args, step)
                if p is None:
                    record.append(f"{step}: no pid")
                    continue
                log(f"chaos: kill -9 {step} (pid {p})")
                os.kill(p, 9)
                record.append(f"killed {step}")
            restarts.put(step)
    finally:
        restarts.put(None)
        thread.join()


def opensearch_sources(args, execution, event_type):
    """The `context` and `message` of every `event_type` event of the execution (search_after
    pages, in document id order)."""
    sources, after = [], None
    while True:
        query = {
            "size": 5000,
            "_source": ["context.task_id", "context.node_id", "message.text"],
            "sort": [{"id": "asc"}],
            "query": {
                "bool": {
                    "filter": [
                        {"term": {"context.execution_id": execution}},
                        {"term": {"event_type": event_type}},
                    ]
                }
            },
        }
        if after:
            query["search_after"] = after
        status, text = http(
            "POST",
            f"{args.opensearch}/{args.events_index}/_search",
            json.dumps(query).encode(),
            {"Content-Type": "application/json"},
        )
        if status != 200:
            raise SystemExit(f"FAILED: listing {event_type} events: {status} {text[:300]!r}")
        hits = json.loads(text)["hits"]["hits"]
        if not hits:
            return sources
        sources += [h["_source"] for h in hits]
        after = hits[-1]["sort"]


def opensearch_task_ids(args, execution, event_type):
    """Every task id of `event_type` events of the execution."""
    return [
        s.get("context", {}).get("task_id", "")
        for s in opensearch_sources(args, execution, event_type)
    ]


def node_events(args, execution):
    """(node events, distinct ones): an instance announces each state once per execution, so
    the same (instance, message) twice is an event indexed twice."""
    events = [
        (s.get("context", {}).get("node_id"), s.get("message", {}).get("text"))
        for s in opensearch_sources(args, execution, "workflow_node_event")
    ]
    return len(events), len(set(events))


def operations(task_ids):
    """Task ids are `<execution>-<phase>-<task>-<attempt>`: (operations, operations run under
    more than one attempt)."""
    attempts = {}
    for task_id in task_ids:
        operation, _, attempt = task_id.rpartition("-")
        attempts.setdefault(operation, set()).add(attempt)
    return len(attempts), sum(1 for a in attempts.values() if len(a) > 1)


def ingest_backlog(args):
    """Messages in the ingest queue, ready or being indexed; None if the broker did not say."""
    out = subprocess.run(
        [args.rabbitmq, "ctl", "list_queues", "-q", "--no-table-headers", "name", "messages"],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        return None
    total = 0
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == args.ingest_queue:
            total += int(fields[1])
    return total


def wait_ingest_drained(args, timeout=600):
    """Waits until ingest has indexed everything queued (twice empty in a row): seconds waited."""
    start = time.monotonic()
    empty = 0
    while empty < 2:
        backlog = ingest_backlog(args)
        empty = empty + 1 if backlog == 0 else 0
        if time.monotonic() - start > timeout:
            raise SystemExit(f"FAILED: ingest still has {backlog} messages after {timeout} s")
        time.sleep(0.5)
    return time.monotonic() - start


def emit(name, value, unit):
    print(json.dumps({"name": name, "value": value, "unit": unit}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--blueprint-dir", required=True)
    parser.add_argument("--cloudsim", required=True)
    parser.add_argument("--opensearch", required=True)
    parser.add_argument("--events-index", default="drover-events-*")
    parser.add_argument("--user", default=os.environ.get("DROVER_ADMIN_USER", "admin"))
    parser.add_argument("--password", default=os.environ.get("DROVER_ADMIN_PASSWORD", "admin"))
    parser.add_argument("--stack", default="deploy/stack")
    parser.add_argument("--rabbitmq", default="scripts/rabbitmq")
    parser.add_argument("--ingest-queue", default="ingest", help="the stack's (its bus prefix + ingest)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--chaos", action="store_true")
    parser.add_argument(
        "--chaos-interval-s", type=float, default=0.5,
        help="between two steps (a killed replica starts again in the background)",
    )
    parser.add_argument(
        "--prefix", default="stack", help="of the deployment's name and the figures' (but chaos)"
    )
    parser.add_argument("--instances", type=int, default=10101, help="for the figures' names")
    parser.add_argument(
        "--expect-install-operations", type=int,
        help="the install's operations in a clean run: fewer here means some lost every event",
    )
    args = parser.parse_args()

    manager = Manager(args.url, args.user, args.password)
    name = f"{args.prefix}-{uuid.uuid4().hex[:8]}"
    log(f"uploading {args.blueprint_dir} as {name}")
    manager.call(
        "PUT", f"/blueprints/{name}?application_file_name=blueprint.yaml",
        raw=archive(args.blueprint_dir),
    )
    manager.call("PUT", f"/deployments/{name}", {"blueprint_id": name})
    # The deployment is made by the workflow service; the gateway reads it from the store.
    deadline = time.monotonic() + 120
    while http("GET", f"{manager.base}/deployments/{name}", headers=manager.headers)[0] != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: deployment {name} not readable within 120 s")
        time.sleep(0.5)
    _, before = http("GET", f"{args.cloudsim}/_sim/stats")
    before = json.loads(before)

    done, record = threading.Event(), []
    chaos_thread = None
    if args.chaos:
        chaos_thread = threading.Thread(target=chaos, args=(args, done, record))
        chaos_thread.start()
    log("install")
    install_id, install_status, install_s = run_workflow(manager, name, "install")
    done.set()
    if chaos_thread:
        chaos_thread.join()
        log(f"chaos: {record}")
    log(f"install {install_status} in {install_s:.1f} s")
    rss = {}
    for service in SERVICES + ["agent"]:
        for i in range(args.replicas if service != "agent" else 1):
            replica = f"{service}-{i}" if service != "agent" else "agent-central"
            p = pid(args, replica)
            if p:
                rss[replica] = peak_rss_mib(p)
    _, after_install = http("GET", f"{args.cloudsim}/_sim/stats")
    after_install = json.loads(after_install)
    # Events reach the index through ingest, behind the execution's status.
    install_events_s = wait_ingest_drained(args)
    log(f"install's events indexed {install_events_s:.1f} s after its end")

    log("uninstall")
    uninstall_id, uninstall_status, uninstall_s = run_workflow(manager, name, "uninstall")
    log(f"uninstall {uninstall_status} in {uninstall_s:.1f} s")
    _, after = http("GET", f"{args.cloudsim}/_sim/stats")
    after = json.loads(after)

    uninstall_events_s = wait_ingest_drained(args)
    log(f"uninstall's events indexed {uninstall_events_s:.1f} s after its end")
    subprocess.run(
        ["curl", "-fsS", "-o", "/dev/null", "-X", "POST", f"{args.opensearch}/_refresh"],
        check=False,
    )
    failures = []
    figures = {}
    for label, execution in (("install", install_id), ("uninstall", uninstall_id)):
        succeeded = opensearch_task_ids(args, execution, "task_succeeded")
        ops, double = operations(succeeded)
        started_ops, started_double = operations(opensearch_task_ids(args, execution, "sending_task"))
        node_count, node_distinct = node_events(args, execution)
        figures[label] = {"succeeded": len(succeeded), "operations": ops,
                          "double": max(double, started_double), "sent_operations": started_ops,
                          "node_events": node_count, "distinct_node_events": node_distinct}
    prefix = "chaos" if args.chaos else args.prefix
    emit(f"{prefix}_install_{args.instances}_s", round(install_s, 3), "s")
    emit(f"{prefix}_uninstall_{args.instances}_s", round(uninstall_s, 3), "s")
    messages = 2 * (figures["install"]["operations"])
    emit(f"{prefix}_install_msgs_per_s", round(messages / install_s, 1), "msgs/s")
    emit(f"{prefix}_install_events_indexed_after_s", round(install_events_s, 1), "s")
    emit(f"{prefix}_uninstall_events_indexed_after_s", round(uninstall_events_s, 1), "s")
    for replica, mib in sorted(rss.items()):
        emit(f"{prefix}_peak_rss_{replica}_mib", round(mib or 0, 1), "MiB")
    duplicates = after["duplicates"] - before["duplicates"]
    leaked = after["alive"] - before["alive"]
    created = after_install["created"] - before["created"]
    lost = sum(max(0, f["sent_operations"] - f["operations"]) for f in figures.values())
    # An operation whose sending_task and task_succeeded were both lost shows only against the
    # count of a clean run.
    if args.expect_install_operations:
        lost += max(0, args.expect_install_operations - figures["install"]["operations"])
    # An install announces six states per instance (Creating … Node instance started).
    lost += max(0, 6 * args.instances - figures["install"]["distinct_node_events"])
    duplicate_events = sum(f["node_events"] - f["distinct_node_events"] for f in figures.values())
    emit(f"{prefix}_install_operations", figures["install"]["operations"], "operations")
    double = sum(f["double"] for f in figures.values())
    emit(f"{prefix}_servers_created", created, "servers")
    emit(f"{prefix}_duplicate_servers", duplicates, "servers")
    emit(f"{prefix}_leaked_servers", leaked, "servers")
    emit(f"{prefix}_lost_events", lost, "events")
    emit(f"{prefix}_duplicate_events", duplicate_events, "events")
    emit(f"{prefix}_double_runs", double, "operations")
    log(f"events: {figures}")
    if install_status != "terminated":
        failures.append(f"install ended {install_status}")
    if uninstall_status != "terminated":
        failures.append(f"uninstall ended {uninstall_status}")
    if created == 0:
        failures.append("cloudsim made no server: the provisioners were not used")
    missed = [r for r in record if r.startswith("install ended before")]
    if missed:
        failures.append(f"chaos incomplete, the install was over first: {missed}")
    failed_restarts = [r for r in record if r.startswith("restart after")]
    if failed_restarts:
        failures.append(f"killed replicas did not start again: {failed_restarts}")
    if duplicates or leaked or lost or double or duplicate_events:
        failures.append(
            f"duplicates {duplicates}, leaked {leaked}, lost events {lost}, double runs {double}, "
            f"events indexed twice {duplicate_events}"
        )
    if figures["install"]["operations"] == 0:
        failures.append("no task_succeeded event indexed for the install")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
