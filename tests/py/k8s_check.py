"""Offline checks of deploy/kubernetes (run by tests/it/kubernetes.rs).

usage: k8s_check.py DIR KUBERNETES_VERSION

1. kubernetes-validate --strict (its bundled schemas; no cluster, no
   network) on every built-in resource the kustomization lists.
2. The PodMonitor and PrometheusRule are CRDs kubernetes-validate has no
   schema for: the PodMonitor's fields are checked here against the
   monitoring.coreos.com/v1 fields it uses, and the PrometheusRule must hold
   exactly the rules of deploy/prometheus/netd.rules.yml (which promtool
   checks and tests).
3. The pieces agree: the kustomization lists files that exist; the
   DaemonSet mounts the generated ConfigMap; the probes, the Service and
   the PodMonitor use ports the container declares, and those are the
   ports netd.toml ([health], [metrics]) listens on; selectors match the
   pod's labels.

Prints "FAIL: ..." and exits 1 on the first problem.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

RULES = "../prometheus/netd.rules.yml"


class Fail(Exception):
    pass


def need(cond, what):
    if not cond:
        raise Fail(what)


def load(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    need(len(docs) == 1, f"{path}: expected one document, got {len(docs)}")
    return docs[0]


def only_keys(obj, allowed, where):
    need(isinstance(obj, dict), f"{where}: not a mapping")
    extra = set(obj) - set(allowed)
    need(not extra, f"{where}: unknown fields {sorted(extra)}")


def check_podmonitor(pm, pod_labels, port_names):
    only_keys(pm, ["apiVersion", "kind", "metadata", "spec"], "PodMonitor")
    need(pm["apiVersion"] == "monitoring.coreos.com/v1", "PodMonitor apiVersion")
    need(isinstance(pm["metadata"].get("name"), str), "PodMonitor metadata.name")
    spec = pm["spec"]
    only_keys(spec, ["selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel"], "PodMonitor spec")
    match = spec["selector"]["matchLabels"]
    need(
        all(pod_labels.get(k) == v for k, v in match.items()),
        f"PodMonitor selector {match} does not match the pod labels {pod_labels}",
    )
    endpoints = spec["podMetricsEndpoints"]
    need(isinstance(endpoints, list) and endpoints, "PodMonitor podMetricsEndpoints")
    for ep in endpoints:
        only_keys(ep, ["port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"], "podMetricsEndpoint")
        need(ep["port"] in port_names, f"PodMonitor port {ep['port']!r} is not a container port {port_names}")
        need(ep.get("path", "/metrics") == "/metrics", "PodMonitor path")
        jobs = [r for r in ep.get("relabelings", []) if r.get("targetLabel") == "job"]
        need(
            [r.get("replacement") for r in jobs] == ["netd"],
            "PodMonitor must set job=\"netd\" (the rules select on it)",
        )
        for r in ep.get("relabelings", []):
            only_keys(r, ["sourceLabels", "separator", "targetLabel", "regex", "replacement", "action", "modulus"], "relabeling")


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def main(directory, version):
    d = Path(directory)
    kust = load(d / "kustomization.yaml")
    resources = [d / r for r in kust["resources"]]
    for r in resources:
        need(r.exists(), f"kustomization lists {r}, which does not exist")
    by_kind = {}
    for r in resources:
        doc = load(r)
        by_kind[doc["kind"]] = (r, doc)

    builtin = [str(r) for r, doc in by_kind.values() if "." not in doc["apiVersion"].split("/")[0]]
    out = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *builtin],
        capture_output=True,
        text=True,
    )
    need(out.returncode == 0, f"kubernetes-validate:\n{out.stdout}{out.stderr}")
    passed = out.stdout.count(" passed ")
    need(passed == len(builtin), f"kubernetes-validate passed {passed} of {len(builtin)}:\n{out.stdout}{out.stderr}")

    gen = kust["configMapGenerator"]
    need(len(gen) == 1, "one generated ConfigMap")
    config_file = d / gen[0]["files"][0]
    need(config_file.exists(), f"{config_file} is missing")
    config = tomllib.loads(config_file.read_text())

    ds = by_kind["DaemonSet"][1]
    pod = ds["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    need(
        ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
        "DaemonSet selector does not match its pod labels",
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    need(
        volumes["config"]["configMap"]["name"] == gen[0]["name"],
        "the DaemonSet's config volume is not the generated ConfigMap",
    )
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    need(ports.get("health") == port_of(config["health"]["listen"]), "health port != [health] listen")
    need(ports.get("metrics") == port_of(config["metrics"]["listen"]), "metrics port != [metrics] listen")
    for probe in ("readinessProbe", "livenessProbe"):
        need(container[probe]["grpc"]["port"] == ports["health"], f"{probe} is not on the health port")
    need(container["readinessProbe"]["grpc"].get("service") == "netd.v1.Control", "readiness checks netd.v1.Control")
    sc = container["securityContext"]
    need(sc["readOnlyRootFilesystem"] is True, "read-only root filesystem")
    need(sc["capabilities"]["drop"] == ["ALL"], "capabilities: drop ALL")
    need(set(sc["capabilities"].get("add", [])) <= {"NET_RAW", "NET_BIND_SERVICE"}, "only NET_RAW/NET_BIND_SERVICE")
    need(pod["spec"]["securityContext"]["runAsNonRoot"] is True, "runAsNonRoot")
    need({"requests", "limits"} <= set(container["resources"]), "resource requests and limits")

    svc = by_kind["Service"][1]
    need(svc["spec"]["selector"].items() <= pod_labels.items(), "Service selector does not match the pod")
    for p in svc["spec"]["ports"]:
        need(p["targetPort"] in ports, f"Service targetPort {p['targetPort']!r} is not a container port")

    check_podmonitor(by_kind["PodMonitor"][1], pod_labels, set(ports))

    rule = by_kind["PrometheusRule"][1]
    only_keys(rule, ["apiVersion", "kind", "metadata", "spec"], "PrometheusRule")
    need(rule["apiVersion"] == "monitoring.coreos.com/v1", "PrometheusRule apiVersion")
    only_keys(rule["spec"], ["groups"], "PrometheusRule spec")
    shipped = yaml.safe_load((d / RULES).read_text())
    need(
        rule["spec"]["groups"] == shipped["groups"],
        f"prometheusrule.yaml differs from {RULES} (regenerate it: spec is that file, indented)",
    )
    print(f"ok: {len(builtin)} resources valid for Kubernetes {version}, PodMonitor, PrometheusRule and cross-references checked")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        main(sys.argv[1], sys.argv[2])
    except (Fail, KeyError, TypeError, ValueError) as e:
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
