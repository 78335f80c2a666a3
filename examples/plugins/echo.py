#!/usr/bin/env python3
"""A drover plugin: JSON lines on stdin (requests), JSON lines on stdout (replies).
echo.<anything> echoes its inputs; echo.fail, echo.crash, echo.garble and echo.hang misbehave."""
import json, os, sys

def send(**line):
    print(json.dumps(line), flush=True)

for raw in sys.stdin:
    req = json.loads(raw)
    if req["type"] != "run":
        continue  # "cancel": every operation here is instant, nothing to stop
    rid, inputs, op = req["id"], req["inputs"], req["implementation"].rsplit(".", 1)[-1]
    send(id=rid, type="log", level="info", message=f"{op} on {req['node']['node_instance_id']}")
    if op == "fail":
        send(id=rid, type="result", status="failed", error="asked to fail", recoverable=False)
    elif op == "crash":
        os._exit(3)
    elif op == "garble":
        print("this is not JSON", flush=True)
    elif op != "hang":
        send(id=rid, type="runtime_properties", set={"echoed": inputs})
        send(id=rid, type="result", status="succeeded", result={"inputs": inputs, "pid": os.getpid()})
