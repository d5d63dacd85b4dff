"""The `xbus-fullenv` environment file: variable substitution, the schema (unknown keys are
errors), and the checks that need no bus (names, references, pipeline graphs, envelopes).

Substitution runs on the text before YAML reads it, so it reaches every value, the client
settings included: `${NAME}`, `${NAME:-default}` (the default also when NAME is empty, as in
a shell), `$$` for a literal `$`. Values come from `--var NAME=VALUE`, then the environment."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from app.accounts.schemas import NAME_PATTERN
from app.actors.schemas import ROLE_PATTERN
from app.pipelines.graph import Graph, check_graph
from app.pipelines.schemas import NAME_PATTERN as PIPELINE_NAME_PATTERN
from app.pipelines.schemas import VERSION_PATTERN

CONFIG_KEY_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
SECRET_MASK = "********"
# Services the test process serves itself (python-xbus's Fullenv registers fullenv.consumer):
# written into the client configuration, never run by xbus-client serve (unless serve: true).
IN_PROCESS_SERVICE_PREFIX = "fullenv."


class EnvFileError(Exception):
    """The environment file cannot be used; `problems` lists every reason (one a line)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------------- substitution
_REFERENCE = re.compile(
    r"\$(?:(?P<escape>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>\{))"
)


def parse_vars(pairs: list[str]) -> dict[str, str]:
    """`NAME=VALUE` pairs (from `--var`); the value may hold `=` and be empty."""
    result: dict[str, str] = {}
    problems = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            problems.append(f"--var {pair!r}: expected NAME=VALUE (NAME: letters, digits, _)")
            continue
        result[name] = value
    if problems:
        raise EnvFileError(problems)
    return result


def substitute(text: str, variables: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """Replace `${NAME}`, `${NAME:-default}` and `$$`; every undefined variable (and every
    malformed `${`) is reported at once, with its line."""
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group("escape"):
            return "$"
        line = text.count("\n", 0, match.start()) + 1
        if match.group("bad"):
            end = text.find("\n", match.start())
            snippet = text[match.start() : end if end != -1 else len(text)][:40]
            problems.append(
                f"line {line}: {snippet!r} is not a variable reference: write ${{NAME}} or "
                "${NAME:-default} (NAME: letters, digits, _), or $$ for a literal $"
            )
            return ""
        name = match.group("name")
        value = variables.get(name)
        if value is None:
            value = environ.get(name)
        default = match.group("default")
        if default is not None and not value:
            return default
        if value is None:
            problems.append(
                f"line {line}: variable {name} is not defined (give --var {name}=VALUE, set it "
                f"in the environment, or write ${{{name}:-default}})"
            )
            return ""
        return value

    result = _REFERENCE.sub(replace, text)
    if problems:
        raise EnvFileError(problems)
    return result


# ---------------------------------------------------------------------------- the schema
def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Model(BaseModel):
    # Keys are written with `-` (as in xbusd's configuration file); `_` is accepted too.
    model_config = ConfigDict(
        extra="forbid", alias_generator=_kebab, populate_by_name=True, frozen=True
    )


Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=255)]
Role = Annotated[str, Field(pattern=ROLE_PATTERN)]
Scalar = str | int | float | bool
# `description: ${DESC:-}` reads as null: an empty description.
Description = Annotated[str, BeforeValidator(lambda v: "" if v is None else v)]


class XbusdSpec(_Model):
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    data_dir: Path | None = None
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    settings: dict[str, Scalar | list[Any] | dict[str, Any]] = Field(default_factory=dict)
    admin_key: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _url_or_server(self) -> XbusdSpec:
        from app.config import Settings

        for key in self.settings:
            name = setting_env_name(key)
            if name in RESERVED_SETTINGS:
                raise ValueError(
                    f"settings: {key} is set by xbus-fullenv ({RESERVED_SETTINGS[name]})"
                )
            if name[len("XBUS_") :].lower() not in Settings.model_fields:
                raise ValueError(f"settings: {key} is not an xbusd setting (see xbusd's README)")
        if self.url is not None:
            if self.admin_key is None:
                raise ValueError("admin-key is required with url (the bus's admin API key)")
            if self.port or self.settings:
                raise ValueError(
                    "port and settings start an xbusd; with url the bus already runs: "
                    "give url or port/settings, not both"
                )
        return self

    def environment(self) -> dict[str, str]:
        """`settings` as the environment of the xbusd child (`XBUS_*` names)."""
        env: dict[str, str] = {}
        for key, value in self.settings.items():
            env[setting_env_name(key)] = _env_value(value)
        return env


RESERVED_SETTINGS = {
    "XBUS_HOST": "always 127.0.0.1",
    "XBUS_NATS_HOST": "always 127.0.0.1",
    "XBUS_PORT": "use port",
    "XBUS_DATA_DIR": "use data-dir",
    "XBUS_ADMIN_API_KEY": "use admin-key",
}


def setting_env_name(key: str) -> str:
    if key.upper().startswith("XBUS_"):
        return key.upper()
    return "XBUS_" + key.replace("-", "_").upper()


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


class ActorSpec(_Model):
    name: Name
    kind: Literal["emitter", "worker", "consumer"]
    description: Description = ""
    roles: list[Role] = Field(default_factory=list)
    config: dict[Annotated[str, Field(pattern=CONFIG_KEY_PATTERN)], Scalar] = Field(
        default_factory=dict
    )
    service: str | None = None
    service_settings: dict[str, Any] = Field(default_factory=dict)
    # Whether `xbus-client serve` (started by xbus-fullenv) runs the service. Unset: yes,
    # except for `fullenv.*` services, which the program that loads the client configuration
    # serves itself (python-xbus's Fullenv helper registers `fullenv.consumer`).
    serve: bool | None = None

    @model_validator(mode="after")
    def _checks(self) -> ActorSpec:
        repeated = sorted(r for r, n in Counter(self.roles).items() if n > 1)
        if repeated:
            raise ValueError(f"roles must be unique; repeated: {', '.join(repeated)}")
        if self.service_settings and self.service is None:
            raise ValueError("service-settings without a service")
        if self.serve and self.service is None:
            raise ValueError("serve: true without a service (nothing to run)")
        return self

    @property
    def served_by_fullenv(self) -> bool:
        """xbus-fullenv runs this actor's service (with `xbus-client serve`)."""
        if self.service is None:
            return False
        if self.serve is not None:
            return self.serve
        return not self.service.startswith(IN_PROCESS_SERVICE_PREFIX)

    def config_strings(self) -> dict[str, str]:
        return {k: _env_value(v) for k, v in self.config.items()}


class AccountSpec(_Model):
    name: Name
    type: Literal["actor", "gateway"] | None = None
    nats: bool | None = None
    description: Description = ""
    cert_expire_days: Annotated[int, Field(ge=1)] | None = None
    client: dict[str, Any] = Field(default_factory=dict)
    actors: list[ActorSpec] = Field(default_factory=list)

    @property
    def account_type(self) -> str:
        if self.type is not None:
            return self.type
        return "actor" if self.nats else "gateway"

    @property
    def uses_nats(self) -> bool:
        return self.nats if self.nats is not None else self.account_type == "actor"

    @model_validator(mode="after")
    def _checks(self) -> AccountSpec:
        if self.uses_nats and not self.actors:
            raise ValueError("a NATS account (nats: true) needs at least one actor")
        for actor in self.actors:
            if actor.service is not None and not self.uses_nats:
                raise ValueError(
                    f"actor {actor.name}: a service runs over NATS (xbus-client serve); "
                    "set nats: true on the account, or remove the service"
                )
        if not self.uses_nats and (self.client or self.cert_expire_days is not None):
            raise ValueError("client and cert-expire-days are for NATS accounts (nats: true)")
        for key in ("account-name", "actors"):
            if key in self.client:
                raise ValueError(f"client: {key!r} is written by xbus-fullenv itself")
        return self


class PipelineSpec(_Model):
    name: Annotated[str, Field(pattern=PIPELINE_NAME_PATTERN)]
    version: Annotated[str, Field(pattern=VERSION_PATTERN)] = "1"
    description: Description = ""
    graph: dict[str, Any] | str
    activate: bool = True


class EmitSpec(_Model):
    emitter: Name
    envelope: dict[str, Any] | None = None
    envelope_file: Path | None = None
    expect: Literal["done", "error", "accepted", "refused"] = "done"
    timeout: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _one_envelope(self) -> EmitSpec:
        if (self.envelope is None) == (self.envelope_file is None):
            raise ValueError("give exactly one of envelope and envelope-file")
        return self


class EnvSpec(_Model):
    xbusd: XbusdSpec = Field(default_factory=XbusdSpec)
    accounts: list[AccountSpec] = Field(default_factory=list)
    pipelines: list[PipelineSpec] = Field(default_factory=list)
    emit: list[EmitSpec] = Field(default_factory=list)


# ---------------------------------------------------------------------------- loading
@dataclass
class Environment:
    """A checked environment file: the model, where it came from, and what the checks found
    that does not stop it (warnings)."""

    path: Path
    spec: EnvSpec
    envelopes: list[dict[str, Any]]  # the emit steps' envelopes, files read
    warnings: list[str] = field(default_factory=list)

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent

    def data_dir(self) -> Path | None:
        configured = self.spec.xbusd.data_dir
        if configured is None:
            return None
        return configured if configured.is_absolute() else self.base_dir / configured

    def actor(self, name: str) -> tuple[AccountSpec, ActorSpec] | None:
        for account in self.spec.accounts:
            for actor in account.actors:
                if actor.name == name:
                    return account, actor
        return None

    def resolved(self, show_secrets: bool = False) -> dict[str, Any]:
        """The environment as it will run: substituted, defaults filled, secrets masked."""
        data: dict[str, Any] = self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        if not show_secrets:
            if "admin-key" in data["xbusd"]:
                data["xbusd"]["admin-key"] = SECRET_MASK
            for account in data["accounts"]:
                for actor in account["actors"]:
                    for key in actor["config"]:
                        if key.endswith("secret"):
                            actor["config"][key] = SECRET_MASK
        accounts = []
        for account, raw in zip(self.spec.accounts, data["accounts"], strict=True):
            raw.update({"type": account.account_type, "nats": account.uses_nats})
            accounts.append({k: raw[k] for k in ("name", "type", "nats")} | raw)
        data["accounts"] = accounts
        resolved: dict[str, Any] = _without_empty(data)
        return resolved


def _without_empty(value: Any) -> Any:
    """Empty lists, mappings and strings left out: the defaults nobody needs to read."""
    if isinstance(value, dict):
        return {
            k: _without_empty(v) for k, v in value.items() if not (v == "" or v == [] or v == {})
        }
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _validation_problems(exc: ValidationError, data: Any) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        # Name the list entry by its name where it has one: accounts[0] says less than shop.
        where = _location(tuple(loc))
        node: Any = data
        named = []
        for part in loc:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
            if isinstance(part, int) and isinstance(node, dict) and "name" in node:
                named.append(str(node["name"]))
        label = f"{where} ({' / '.join(named)})" if named else where
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{label}: {message}")
    return problems


def load(path: Path, variables: Mapping[str, str], environ: Mapping[str, str]) -> Environment:
    """Read, substitute, validate and cross-check an environment file; EnvFileError lists
    every problem found."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnvFileError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise EnvFileError([f"{path}: cannot read it: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise EnvFileError([f"{path}: not UTF-8 text"]) from None
    try:
        text = substitute(text, variables, environ)
    except EnvFileError as exc:
        raise EnvFileError([f"{path}: {p}" for p in exc.problems]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EnvFileError([f"{path}: not valid YAML (after substitution): {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EnvFileError([f"{path}: the file must hold a mapping (xbusd, accounts, ...)"])
    try:
        spec = EnvSpec.model_validate(data)
    except ValidationError as exc:
        raise EnvFileError([f"{path}: {p}" for p in _validation_problems(exc, data)]) from None
    env = Environment(path, spec, [])
    problems = _cross_check(env)
    if problems:
        raise EnvFileError([f"{path}: {p}" for p in problems])
    return env


# ---------------------------------------------------------------------------- checks
@dataclass
class _FileActors:
    """An ActorResolver over the actors the file defines."""

    kinds: dict[str, str]
    roles: dict[str, set[str]]

    def actor_kind(self, ref: str) -> str | None:
        return self.kinds.get(ref)

    def role_kinds(self, role: str) -> set[str]:
        return self.roles.get(role, set())


def _repeated(names: list[str]) -> list[str]:
    return sorted(n for n, count in Counter(names).items() if count > 1)


def _cross_check(env: Environment) -> list[str]:
    spec = env.spec
    problems: list[str] = []
    for what, names in (
        ("account", [a.name for a in spec.accounts]),
        ("actor", [actor.name for a in spec.accounts for actor in a.actors]),
        ("pipeline", [f"{p.name} version {p.version}" for p in spec.pipelines]),
    ):
        for name in _repeated(names):
            problems.append(f"{what} {name} is defined more than once")

    resolver = _FileActors({}, {})
    for account in spec.accounts:
        for actor in account.actors:
            resolver.kinds[actor.name] = actor.kind
            for role in actor.roles:
                resolver.roles.setdefault(role, set()).add(actor.kind)

    graphs: list[tuple[PipelineSpec, Graph]] = []
    for pipeline in spec.pipelines:
        label = f"pipeline {pipeline.name}"
        graph, messages = check_graph(pipeline.graph)
        errors = [m for m in messages if m.level == "error"]
        for message in messages:
            node = f" [node {message.node_id}]" if message.node_id else ""
            line = f"{label}{node}: {message.text}"
            (problems if message.level == "error" else env.warnings).append(line)
        if graph is None or errors:
            continue
        graphs.append((pipeline, graph))
        # References to actors the file does not define may exist on the bus already: the
        # bus has the last word when the pipeline is saved.
        plain = {(m.level, m.text, m.node_id) for m in messages}
        for message in check_graph(pipeline.graph, resolver)[1]:
            if (message.level, message.text, message.node_id) not in plain:
                node = f" [node {message.node_id}]" if message.node_id else ""
                env.warnings.append(f"{label}{node}: {message.text} (among the file's actors)")

    for index, step in enumerate(spec.emit):
        label = f"emit[{index}] ({step.emitter})"
        found = env.actor(step.emitter)
        if found is None:
            problems.append(
                f"{label}: the emitter must be an actor of the file (its account's API key emits)"
            )
        elif found[1].kind != "emitter":
            problems.append(f"{label}: {step.emitter} is a {found[1].kind}, not an emitter")
        envelope = _envelope_of(env, step, label, problems)
        env.envelopes.append(envelope or {})
        if envelope is None or found is None or step.expect == "refused":
            continue
        types = {e.get("type") for e in envelope.get("events", []) if isinstance(e, dict)}
        matching = [
            pipeline.name
            for pipeline, graph in graphs
            if pipeline.activate and _takes(graph, found[1], types)
        ]
        if not matching:
            env.warnings.append(
                f"{label}: no pipeline of the file takes {step.emitter} with event types "
                f"{', '.join(sorted(str(t) for t in types))}"
            )
        elif len(matching) > 1:
            env.warnings.append(
                f"{label}: several pipelines take it ({', '.join(matching)}): the bus will "
                "refuse the envelope"
            )
    return problems


def _takes(graph: Graph, emitter: ActorSpec, types: set[Any]) -> bool:
    for node in graph.emitters():
        named = emitter.name in node.actors or bool(set(node.roles) & set(emitter.roles))
        if named and graph.matches(node.id, [str(t) for t in types]):
            return True
    return False


def _envelope_of(
    env: Environment, step: EmitSpec, label: str, problems: list[str]
) -> dict[str, Any] | None:
    from app.envelopes.codec import EnvelopeFormatError, parse_envelope_json

    envelope = step.envelope
    if step.envelope_file is not None:
        path = step.envelope_file
        path = path if path.is_absolute() else env.base_dir / path
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            problems.append(f"{label}: cannot read {path}: {exc.strerror or exc}")
            return None
        except ValueError as exc:
            problems.append(f"{label}: {path} is not JSON: {exc}")
            return None
        if not isinstance(loaded, dict):
            problems.append(f"{label}: {path} must hold a JSON object (an envelope)")
            return None
        envelope = loaded
    assert envelope is not None
    try:
        parse_envelope_json(envelope, max_items=10**9, max_bytes=2**62)
    except EnvelopeFormatError as exc:
        problems.append(f"{label}: invalid envelope: {exc}")
        return None
    return envelope
