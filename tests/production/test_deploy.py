"""deploy/: what can be checked without a Docker engine or a cluster. The manifests' schema
validation (kubectl kustomize + kubernetes-validate) is .ci/validate-manifests; here the
Xbus-specific checks run on the base, catch what they should, and every setting the
manifests and the image set is a real setting."""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes" / "base"


def _validator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "validate_manifests", DEPLOY / "validate_manifests.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_base_passes_the_checks() -> None:
    out = subprocess.run(
        [sys.executable, str(DEPLOY / "validate_manifests.py"), "--base", str(BASE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "ok (8 objects)" in out.stdout


def test_checks_catch_what_would_hurt() -> None:
    validator = _validator()
    good = validator.load_base(BASE)
    assert validator.check(good) == []

    def broken(change: Any) -> list[str]:
        docs = copy.deepcopy(good)
        change({d["kind"]: d for d in docs})
        problems: list[str] = validator.check(docs)
        return problems

    def pod(docs: dict[str, Any]) -> Any:
        return docs["Deployment"]["spec"]["template"]["spec"]

    def no_pre_stop(docs: dict[str, Any]) -> None:
        del pod(docs)["containers"][0]["lifecycle"]

    def short_grace(docs: dict[str, Any]) -> None:
        pod(docs)["terminationGracePeriodSeconds"] = 20

    def wrong_readiness(docs: dict[str, Any]) -> None:
        pod(docs)["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/healthz"

    def root(docs: dict[str, Any]) -> None:
        pod(docs)["securityContext"] = {}

    def lost_service(docs: dict[str, Any]) -> None:
        docs["Service"]["spec"]["selector"] = {"app": "other"}

    def long_polls(docs: dict[str, Any]) -> None:
        docs["ConfigMap"]["data"]["XBUS_LONG_POLL_MAX"] = "60"

    def latest(docs: dict[str, Any]) -> None:
        pod(docs)["containers"][0]["image"] = "xbus-server:latest"

    cases = {
        no_pre_stop: "preStop",
        short_grace: "terminationGracePeriodSeconds",
        wrong_readiness: "readinessProbe",
        root: "runAsNonRoot",
        lost_service: "selects no xbus pod",
        long_polls: "XBUS_LONG_POLL_MAX",
        latest: "pinned tag",
    }
    for change, expected in cases.items():
        problems = broken(change)
        assert any(expected in p for p in problems), (change.__name__, problems)


def _manifest_settings() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("configmap.yaml", "secret.yaml"):
        text = (BASE / name).read_text()
        doc = yaml.safe_load(text)
        found.update({k: str(v) for k, v in (doc.get("data") or doc.get("stringData")).items()})
        # Keys shown commented out are documentation of real settings too.
        found.update({k: "" for k in re.findall(r"#\s*(XBUS_[A-Z0-9_]+):", text)})
    return found


def test_every_setting_named_exists_and_parses() -> None:
    fields = {f"XBUS_{name.upper()}" for name in Settings.model_fields}
    named = _manifest_settings()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for name in re.findall(r"\b(XBUS_[A-Z0-9_]+)=", dockerfile):
        named.setdefault(name, "")
    # Other programs' settings the manifests may set (uvicorn's trusted proxies).
    others = {"FORWARDED_ALLOW_IPS"}
    named = {k: v for k, v in named.items() if k not in others}
    unknown = sorted(set(named) - fields)
    assert not unknown, f"not settings: {unknown}"
    values: dict[str, Any] = {k.removeprefix("XBUS_").lower(): v for k, v in named.items() if v}
    settings = Settings(**values)
    assert settings.host == "0.0.0.0"
    assert settings.long_poll_max <= settings.http_shutdown_grace


def test_dockerfile_is_multi_stage_non_root_without_compilers() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2
    final = stages[-1]
    assert final.split()[2] == "runtime"
    users = re.findall(r"^USER (\S+)", final, flags=re.MULTILINE)
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("0", "root")
    for compiler in ("build-essential", "gcc", "g++", "apt-get install"):
        assert compiler not in final, compiler
    assert "uv sync --frozen --no-dev" in text  # the lockfile, no dev tools
    assert "COPY --from=build /app /app" in final
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for path in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE):
        for part in path.split():
            assert f"!{part.rstrip('/')}" in {line.rstrip("/") for line in ignored}, part
