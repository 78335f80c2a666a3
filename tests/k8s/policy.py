"""Checks drover's rendered Kubernetes manifests for what the schema cannot: every drover
service Deployment has readiness and liveness probes, resource requests, a memory limit, a
Service, an HorizontalPodAutoscaler and a PodDisruptionBudget of its own, and every Secret or
ConfigMap it references exists in the same rendering.

Usage: python3 policy.py RENDERED.yaml   (multi-document YAML from `kustomize build`)
"""
import sys


def load(path):
    # kustomize output is plain YAML; PyYAML ships with kubernetes-validate's dependencies.
    import yaml

    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def main(path):
    docs = load(path)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    problems = []
    names_of = lambda kind: set(by_kind.get(kind, {}))
    for name, dep in by_kind.get("Deployment", {}).items():
        for kind in ("Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            if name not in names_of(kind):
                problems.append(f"Deployment {name}: no {kind} named {name}")
        for c in dep["spec"]["template"]["spec"]["containers"]:
            where = f"Deployment {name}, container {c['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{where}: no {probe}")
            res = c.get("resources", {})
            if not res.get("requests", {}).get("cpu") or not res.get("requests", {}).get("memory"):
                problems.append(f"{where}: no cpu and memory requests")
            if not res.get("limits", {}).get("memory"):
                problems.append(f"{where}: no memory limit")
            refs = [("ConfigMap", e["configMapRef"]["name"]) for e in c.get("envFrom", []) if "configMapRef" in e]
            refs += [("Secret", e["valueFrom"]["secretKeyRef"]["name"]) for e in c.get("env", [])
                     if "secretKeyRef" in e.get("valueFrom", {})]
            for kind, ref in refs:
                if ref not in names_of(kind):
                    problems.append(f"{where}: references {kind} {ref}, which is not rendered")
    for p in problems:
        print(f"error: {path}: {p}", file=sys.stderr)
    if not by_kind.get("Deployment"):
        problems.append("no Deployment rendered")
        print(f"error: {path}: no Deployment rendered", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
