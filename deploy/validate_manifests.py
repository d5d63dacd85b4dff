"""Checks of the Kubernetes manifests that a schema cannot express: what Xbus needs of its
Deployment (probes, graceful termination, an unprivileged user) and that the objects point
at each other correctly (selectors, ports, names).

    python deploy/validate_manifests.py RENDERED.yaml...    # output of `kubectl kustomize`
    python deploy/validate_manifests.py --base DIR          # the base's files, unrendered

Needs only PyYAML. Exits 1 with one line per problem. `.ci/validate-manifests` runs it after
rendering the kustomizations and validating them against the Kubernetes JSON schemas."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REQUIRED_KINDS = {
    "Deployment",
    "Service",
    "Ingress",
    "ConfigMap",
    "Secret",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
}
# Created outside the base, on purpose: the CA shared by replicas, the ingress certificate.
EXTERNAL_SECRETS = {"xbus-ca", "xbus-tls"}
# Time xbusd needs after SIGTERM besides the HTTP drain: webhooks, duties, NATS, the pool.
SHUTDOWN_MARGIN = 10

Doc = dict[str, Any]


def load(paths: Iterable[Path]) -> list[Doc]:
    docs: list[Doc] = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") and doc.get("kind") != "Kustomization":
                docs.append(doc)
    return docs


def load_base(directory: Path) -> list[Doc]:
    """A base's resources with its `images` applied (the one transform the checks need)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = load(directory / name for name in kustomization["resources"])
    images = {i["name"]: i for i in kustomization.get("images", [])}
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            image = images.get(container["image"].split(":")[0])
            if image:
                name = image.get("newName", image["name"])
                tag = image.get("newTag")
                container["image"] = f"{name}:{tag}" if tag else name
    return docs


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check(docs: list[Doc]) -> list[str]:
    problems: list[str] = []
    by_kind: dict[str, list[Doc]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)

    def named(kind: str) -> dict[str, Doc]:
        return {d["metadata"]["name"]: d for d in by_kind.get(kind, [])}

    missing = REQUIRED_KINDS - set(by_kind)
    if missing:
        problems.append(f"missing kinds: {', '.join(sorted(missing))}")
    deployments = named("Deployment")
    if len(deployments) != 1:
        problems.append(f"expected one Deployment, found {len(deployments)}")
        return problems
    [(dep_name, deployment)] = deployments.items()
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    if not _matches(spec["selector"].get("matchLabels", {}), pod_labels):
        problems.append("Deployment selector does not match its pod labels")
    containers = pod.get("containers", [])
    xbusd = next((c for c in containers if c.get("name") == "xbusd"), None)
    if xbusd is None:
        return [*problems, "the Deployment has no container named xbusd"]

    config = {}
    for source in xbusd.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            if name not in named("ConfigMap"):
                problems.append(f"envFrom names ConfigMap {name}, which is not defined")
            else:
                config.update(named("ConfigMap")[name].get("data", {}))
        if "secretRef" in source and source["secretRef"]["name"] not in named("Secret"):
            problems.append(f"envFrom names Secret {source['secretRef']['name']}, not defined")
    for env in xbusd.get("env", []):
        if "value" in env:
            config[env["name"]] = env["value"]

    # Probes: liveness on /healthz (the process), readiness on /readyz (database, NATS).
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = xbusd.get(probe, {}).get("httpGet", {}).get("path")
        if got != path:
            problems.append(f"{probe} must GET {path} (found {got})")
    ports = {p.get("name"): p.get("containerPort") for p in xbusd.get("ports", [])}
    if "http" not in ports:
        problems.append("the xbusd container must name its port http")
    elif str(ports["http"]) != str(config.get("XBUS_PORT", 8000)):
        problems.append(f"container port {ports['http']} is not XBUS_PORT")
    if config.get("XBUS_HOST") not in ("0.0.0.0", "::"):  # noqa: S104
        problems.append("XBUS_HOST must be 0.0.0.0 (or ::) in a pod")

    # Graceful termination: the pod's grace covers preStop + the HTTP drain + the rest.
    command = xbusd.get("lifecycle", {}).get("preStop", {})
    pre_stop = 0
    if "exec" in command and command["exec"].get("command", [None])[0] == "sleep":
        pre_stop = int(command["exec"]["command"][1])
    elif "sleep" in command:
        pre_stop = int(command["sleep"]["seconds"])
    else:
        problems.append("the xbusd container needs a preStop sleep (endpoints update first)")
    drain = int(config.get("XBUS_HTTP_SHUTDOWN_GRACE", 10))
    grace = int(pod.get("terminationGracePeriodSeconds", 30))
    if grace < pre_stop + drain + SHUTDOWN_MARGIN:
        problems.append(
            f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} + "
            f"XBUS_HTTP_SHUTDOWN_GRACE {drain} + {SHUTDOWN_MARGIN}"
        )
    long_poll = float(config.get("XBUS_LONG_POLL_MAX", 60))
    if long_poll > drain:
        problems.append(
            f"XBUS_LONG_POLL_MAX {long_poll:g} > XBUS_HTTP_SHUTDOWN_GRACE {drain}: "
            "long-polls would be cut at every rollout"
        )

    # An unprivileged, locked-down container.
    pod_security = pod.get("securityContext", {})
    security = xbusd.get("securityContext", {})
    if not (pod_security.get("runAsNonRoot") or security.get("runAsNonRoot")):
        problems.append("runAsNonRoot must be true")
    if (security.get("runAsUser") or pod_security.get("runAsUser") or 0) == 0:
        problems.append("runAsUser must be a non-zero uid")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    image = str(xbusd.get("image", ""))
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        problems.append(f"the image {image!r} needs a pinned tag")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in xbusd.get("volumeMounts", []):
        if mount["name"] not in volumes:
            problems.append(f"volumeMount {mount['name']} has no volume")
    for volume in volumes.values():
        secret = volume.get("secret", {}).get("secretName")
        if secret and secret not in named("Secret") and secret not in EXTERNAL_SECRETS:
            problems.append(f"volume {volume['name']} names Secret {secret}, not defined")

    # The others point at the Deployment and its pods.
    for service in by_kind.get("Service", []):
        if not _matches(service["spec"].get("selector", {}), pod_labels):
            problems.append(f"Service {service['metadata']['name']} selects no xbus pod")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort")
            if target not in ports and target not in ports.values():
                problems.append(f"Service port {port.get('name')} targets unknown port {target}")
    services = named("Service")
    for ingress in by_kind.get("Ingress", []):
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                if backend["name"] not in services:
                    problems.append(f"Ingress backend {backend['name']} is not a Service")
                    continue
                names = {p.get("name") for p in services[backend["name"]]["spec"]["ports"]}
                numbers = {p.get("port") for p in services[backend["name"]]["spec"]["ports"]}
                port = backend["port"]
                if port.get("name") not in names and port.get("number") not in numbers:
                    problems.append(f"Ingress backend port {port} is not on the Service")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        if (target.get("kind"), target.get("name")) != ("Deployment", dep_name):
            problems.append(f"HorizontalPodAutoscaler scales {target}, not the Deployment")
        if hpa["spec"].get("minReplicas", 1) < 2:
            problems.append("HorizontalPodAutoscaler minReplicas < 2: no replica during a drain")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not _matches(pdb["spec"].get("selector", {}).get("matchLabels", {}), pod_labels):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']} selects no pod")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="rendered manifests")
    parser.add_argument("--base", type=Path, help="a kustomize base directory, unrendered")
    args = parser.parse_args(argv)
    if not args.base and not args.files:
        parser.error("give rendered manifests or --base")
    docs = load_base(args.base) if args.base else load(args.files)
    what = str(args.base) if args.base else ", ".join(str(p) for p in args.files)
    problems = check(docs)
    for problem in problems:
        print(f"manifests: {what}: {problem}", file=sys.stderr)
    if not problems:
        print(f"manifests: {what}: ok ({len(docs)} objects)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
