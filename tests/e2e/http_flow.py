#!/usr/bin/env python3
"""The install flow with raw HTTP (Python's standard library only) against a drover manager
through nginx: upload a blueprint archive, create a deployment, start install, follow its
events until workflow_succeeded, outputs and node instances, uninstall, delete.

    http_flow.py --url http://127.0.0.1:8080 --blueprint-dir examples/hello [--user admin
                 --password admin --insecure]

Exit code 0 when every check passed, 1 with the failed check on stderr.
"""

import argparse
import base64
import io
import json
import ssl
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


class Manager:
    def __init__(self, url, user, password, insecure):
        self.base = url.rstrip("/") + "/api/v3.1"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Tenant": "default_tenant"}
        self.context = ssl._create_unverified_context() if insecure else None

    def call(self, method, path, body=None, query=None, raw=None, expect=(200, 201, 204)):
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = dict(self.headers)
        data = None
        if raw is not None:
            data = raw
            headers["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=60) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        answer = json.loads(text) if text else None
        check(status in expect, f"{method} {path}: {status} {answer}")
        return answer


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def archive(directory, top):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(directory, arcname=top)
    return buffer.getvalue()


def events_of(manager, execution):
    items = manager.call("GET", "/events", query={"execution_id": execution, "_size": 1000})
    return items["items"]


def run_workflow(manager, deployment, workflow, timeout):
    execution = manager.call(
        "POST", "/executions", {"deployment_id": deployment, "workflow_id": workflow}
    )
    eid = execution["id"]
    deadline = time.time() + timeout
    while True:
        execution = manager.call("GET", f"/executions/{eid}")
        types = [e["event_type"] for e in events_of(manager, eid)]
        if execution["status"] in ("terminated", "failed", "cancelled") and (
            "workflow_succeeded" in types or "workflow_failed" in types
        ):
            break
        check(time.time() < deadline, f"{workflow} still {execution['status']}, events {types[-3:]}")
        time.sleep(0.5)
    check(execution["status"] == "terminated", f"{workflow}: {execution}")
    check(types[0] == "workflow_started", f"first event {types[0]}")
    check("task_succeeded" in types, f"no task_succeeded among {set(types)}")
    print(f"{workflow}: terminated, {len(types)} events and logs")
    return eid


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--blueprint-dir", required=True)
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    manager = Manager(args.url, args.user, args.password, args.insecure)
    suffix = uuid.uuid4().hex[:8]
    blueprint, deployment = f"http-bp-{suffix}", f"http-dep-{suffix}"

    status = manager.call("GET", "/status")
    check(status["status"] == "OK", f"status: {status}")
    manager.call(
        "PUT", f"/blueprints/{blueprint}", raw=archive(args.blueprint_dir, blueprint),
        query={"application_file_name": "blueprint.yaml"}, expect=(201,),
    )
    manager.call("PUT", f"/deployments/{deployment}", {"blueprint_id": blueprint}, expect=(201,))
    install = run_workflow(manager, deployment, "install", args.timeout)
    instances = manager.call("GET", "/node-instances", query={"deployment_id": deployment})
    states = {i["state"] for i in instances["items"]}
    check(states == {"started"}, f"instance states after install: {states}")
    outputs = manager.call("GET", f"/deployments/{deployment}/outputs")["outputs"]
    check(isinstance(outputs, dict) and outputs, f"outputs: {outputs}")
    logs = [e for e in events_of(manager, install) if e["type"] == "cloudify_log"]
    check(logs, "no operation logs indexed")
    run_workflow(manager, deployment, "uninstall", args.timeout)
    manager.call("DELETE", f"/deployments/{deployment}")
    deadline = time.time() + 60
    while manager.call("GET", f"/deployments/{deployment}", expect=(200, 404)).get(
        "error_code"
    ) != "not_found_error":
        check(time.time() < deadline, "the deployment is still there a minute after delete")
        time.sleep(0.5)
    manager.call("DELETE", f"/blueprints/{blueprint}")
    print("raw HTTP flow passed")


if __name__ == "__main__":
    main()
