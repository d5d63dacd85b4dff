"""The files of `xbus-client`: the python-xbus client configuration (read, never written) and
the `<account-name>.certs` file beside it, which python-xbus's `Client.load_tls_conf` reads:
a YAML mapping with the keys `tls.private-key`, `tls.certificate`, `tls.csr`, `tls.rootca`
(PEM). `xbus-client` also keeps `xbus.registration-id` and `xbus.url` there, so an
interrupted `register` resumes and `renew-cert` knows where the bus is."""

from __future__ import annotations

import base64
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from app.accounts.schemas import NAME_PATTERN

PRIVATE_KEY = "tls.private-key"
CERTIFICATE = "tls.certificate"
CSR = "tls.csr"
ROOTCA = "tls.rootca"
REGISTRATION_ID = "xbus.registration-id"
BUS_URL = "xbus.url"
TLS_ENTRIES = (PRIVATE_KEY, CERTIFICATE, CSR, ROOTCA)

KINDS = ("emitter", "worker", "consumer")
_NAME = re.compile(NAME_PATTERN)


class ClientFileError(Exception):
    """A configuration or certificate file that cannot be used; the message says why."""


@dataclass(frozen=True)
class ActorDef:
    name: str
    kind: str
    roles: list[str] = field(default_factory=list)
    service_type: str | None = None


def _lookup(data: dict[str, Any], key: str) -> Any:
    """A key as python-xbus's ClientConf reads it: flat (`tls.certfile: x`) or nested
    (`tls: {certfile: x}`)."""
    if key in data:
        return data[key]
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass
class ClientConfig:
    path: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ClientFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ClientFileError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ClientFileError(f"{path} must hold a mapping (account-name, actors, ...)")
        config = cls(path, data)
        config.account_name  # noqa: B018  (checked up front)
        config.actors()
        return config

    def get(self, key: str) -> Any:
        return _lookup(self.data, key)

    @property
    def confdir(self) -> Path:
        return self.path.resolve().parent

    @property
    def account_name(self) -> str:
        name = self.get("account-name")
        if not isinstance(name, str) or not name:
            raise ClientFileError(f"{self.path}: `account-name` is missing")
        if not _NAME.fullmatch(name):
            raise ClientFileError(
                f"{self.path}: account-name {name!r} is not a valid name (letters, digits and "
                "`._@-`, starting with a letter or digit)"
            )
        return name

    @property
    def nats_url(self) -> str | None:
        value = self.get("nats-url")
        return str(value) if value else None

    def actors(self) -> list[ActorDef]:
        """The `actors` entry as python-xbus lists it: keys are actor names (or integers,
        the actor then naming itself with `name`)."""
        raw = self.get("actors")
        if raw is None:
            return []
        if not isinstance(raw, dict):
            raise ClientFileError(f"{self.path}: `actors` must be a mapping of actor names")
        actors = []
        for key, value in raw.items():
            conf = value if isinstance(value, dict) else {}
            name = conf.get("name", key)
            if not isinstance(key, int) and name != key:
                raise ClientFileError(f"{self.path}: actor {key!r} is named {name!r}")
            if not isinstance(name, str):
                raise ClientFileError(f"{self.path}: actor {key!r} has no name")
            kind = str(conf.get("kind", "")).lower()
            if kind not in KINDS:
                raise ClientFileError(
                    f"{self.path}: actor {name!r}: kind must be one of {', '.join(KINDS)}"
                )
            roles = conf.get("roles") or []
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise ClientFileError(f"{self.path}: actor {name!r}: roles must be a list")
            service = conf.get("service") or {}
            service_type = service.get("type") if isinstance(service, dict) else None
            actors.append(ActorDef(name, kind, list(roles), service_type))
        return actors

    def certs_path(self) -> Path:
        """Where python-xbus looks for the certificate file of this configuration."""
        if self.get("tls.certdir"):
            raise ClientFileError(
                f"{self.path}: `tls.certdir` (separate key and certificate files) is not "
                "supported by xbus-client; remove it to use <account-name>.certs, or set "
                "`tls.certfile`"
            )
        certfile = self.get("tls.certfile")
        if certfile:
            return Path(str(certfile))  # python-xbus opens it as given
        return self.confdir / f"{self.account_name}.certs"

    def inline_tls_entries(self) -> list[str]:
        """TLS entries the configuration itself sets: python-xbus prefers them to the
        .certs file."""
        return [e for e in TLS_ENTRIES if self.get(e) or self.get(e + "-file")]


# --- the .certs file ----------------------------------------------------------------------


class BlockDumper(yaml.SafeDumper):
    """YAML with multi-line strings as `|` blocks (PEM, graphs): readable, and diffable."""


def _str_block(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


BlockDumper.add_representer(str, _str_block)


def read_certs(path: Path) -> dict[str, str]:
    """The .certs file's entries ({} when there is none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ClientFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClientFileError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClientFileError(f"{path} must hold a mapping of tls.* entries")
    return {str(k): str(v) for k, v in data.items() if v is not None}


def write_certs(path: Path, entries: dict[str, str]) -> None:
    """Replace the .certs file at once (a private key is in it: mode 0600)."""
    ordered = {k: entries[k] for k in (*TLS_ENTRIES, REGISTRATION_ID, BUS_URL) if k in entries}
    text = yaml.dump(ordered, Dumper=BlockDumper, sort_keys=False, default_flow_style=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- keys ---------------------------------------------------------------------------------


def sign_text(private_key_pem: str, text: str) -> str:
    """A base64 signature of `text` (UTF-8) with a PEM private key, as renew-cert checks it:
    ECDSA or RSA PKCS#1 v1.5 with SHA-256, or Ed25519."""
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ClientFileError(f"the private key cannot be read: {exc}") from None
    data = text.encode("utf-8")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.sign(data)
    else:
        raise ClientFileError("the private key must be ECDSA, RSA or Ed25519")
    return base64.b64encode(raw).decode()
