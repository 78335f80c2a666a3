"""Checks that the rendered manifests and the service binaries agree: every flag a container
passes exists in its binary's --help, and every DROVER_* variable of the drover-config
ConfigMap is read by at least one binary (a flag's `[env: …]` in its --help). A renamed flag
or variable then fails here instead of in a cluster's CrashLoopBackOff.

Usage: python3 args.py RENDERED.yaml BIN_DIR
"""
import re
import subprocess
import sys


def load(path):
    import yaml

    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def help_text(bin_dir, binary, cache={}):
    if binary not in cache:
        out = subprocess.run([f"{bin_dir}/{binary}", "--help"], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise SystemExit(f"error: {bin_dir}/{binary} --help failed: {out.stderr.strip()}")
        cache[binary] = out.stdout
    return cache[binary]


def main(path, bin_dir):
    docs = load(path)
    problems = []
    helps = {}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            args = c.get("args") or []
            if not args or not args[0].startswith("drover-"):
                continue
            binary = args[0]
            helps[binary] = help_text(bin_dir, binary)
            flags = set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z0-9-]+)", helps[binary]))
            for arg in args[1:]:
                flag = arg.split("=", 1)[0]
                if flag.startswith("--") and flag not in flags:
                    problems.append(f"Deployment {d['metadata']['name']}: {binary} has no {flag}")
    read = set()
    for text in helps.values():
        read.update(re.findall(r"\[env: (DROVER_[A-Z0-9_]+)[=\]]", text))
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("drover-config"):
            for key in d.get("data", {}):
                if key.startswith("DROVER_") and key not in read and key != "DROVER_AMQP_ADDRESS":
                    problems.append(f"ConfigMap {d['metadata']['name']}: no service reads {key}")
    for p in problems:
        print(f"error: {path}: {p}", file=sys.stderr)
    if not helps:
        print(f"error: {path}: no drover container found", file=sys.stderr)
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
