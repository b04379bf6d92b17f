"""The proxy's settings: one pydantic model, filled from defaults, a TOML file, the environment
and the command line (later sources win).

Every setting has a config-file key (`listen = "..."`), an environment variable (`DBPROXY_LISTEN`)
and, for the common ones, a command-line option. Agents are a table in the file
(`[agents.NAME] password = "..."` or `verifier = "SCRAM-SHA-256$..."`), `--agent NAME=PASSWORD`
on the command line, and `DBPROXY_AGENT` (one `NAME=PASSWORD` per line) in the environment.

A config file that holds credentials (the upstream URL's password or an agent password) must be
readable by its owner only, like libpq's `.pgpass`; otherwise loading fails with a clear message.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from inverse.opclass import OP_CLASSES

ENV_PREFIX = "DBPROXY_"

#: hold: writes wait for a reviewer; undo: commit with an exact inverse (or hold what has none);
#: passthrough: trusted, nothing intercepted; read-only: every write refused (25006).
Mode = Literal["hold", "undo", "passthrough", "read-only"]


class SettingsError(ValueError):
    """A setting is missing, malformed or unsafe; the message says which and how to fix it."""


def _default_data_dir() -> Path:
    return platformdirs.user_data_path("dbproxy")


def parse_host_port(value: str, *, what: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{what} must look like HOST:PORT, got {value!r}")
    n = int(port)
    if not 0 <= n <= 65535:
        raise ValueError(f"{what} port {n} is out of range 0-65535")
    return host.strip("[]") or "127.0.0.1", n


def admin_host_port(value: str) -> str:
    """The review API's address as HOST:PORT, also when written as a URL (`http://HOST:PORT/`),
    which is how people tend to write the address of an HTTP API."""
    value = value.strip()
    if "://" not in value:
        parse_host_port(value, what="address")
        return value
    try:
        parts = urlsplit(value)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise ValueError(f"address {value!r} is not a valid URL: {e}") from None
    if parts.scheme != "http":
        raise ValueError(f"the review API speaks plain http://, got {value!r}")
    if not host or port is None:
        raise ValueError(f"address must name a host and a port, e.g. http://127.0.0.1:6433, got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"address must be just http://HOST:PORT, got {value!r}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: An object pattern: `*`, a name glob (`orders`, `ord*`), or schema.name globs (`sales.*`, `public.orders`).
_GLOB = re.compile(r"\*|[A-Za-z_*?][A-Za-z0-9_$*?\-]*(\.[A-Za-z_*?][A-Za-z0-9_$*?\-]*)?")


class RuleSettings(BaseModel):
    """One rule: `decision` for operation classes `ops` on objects matching `objects`. The first
    matching rule wins, in file order (an agent's own rules first, then the default `rules`)."""

    model_config = ConfigDict(extra="forbid")

    ops: list[str] = Field(description=f"operation classes ({', '.join(OP_CLASSES)}), or \"*\" for all; a "
                           "comma-separated string works too")
    objects: list[str] = Field(default_factory=lambda: ["*"], description="schema.name globs (`public.orders`, "
                               "`sales.*`, `*`); a name without a schema matches it in any schema")
    decision: Literal["allow", "ask", "deny"]
    ask: Literal["hold", "pause"] = Field(default="hold", description="how `ask` asks: hold the transaction for a "
                                          "reviewer, or pause the statement until one approves it")
    max_rows: int | None = Field(default=None, ge=0, description="an `allow` covers a transaction only while it "
                                 "changed at most this many rows of the matching objects (cascades and trigger "
                                 "writes included); above it, the rule asks")

    @field_validator("ops", "objects", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v

    @field_validator("ops")
    @classmethod
    def _check_ops(cls, v: list[str]) -> list[str]:
        return operation_classes(v)

    @field_validator("objects")
    @classmethod
    def _check_objects(cls, v: list[str]) -> list[str]:
        return object_patterns(v)


def operation_classes(v: list[str]) -> list[str]:
    """Operation classes as a rule or grant names them (`*`: all), checked and lower-cased."""
    if not v:
        raise ValueError("name at least one operation class")
    ops = [o.lower() for o in v]
    unknown = [o for o in ops if o != "*" and o not in OP_CLASSES]
    if unknown:
        raise ValueError(f"unknown operation class {unknown[0]!r}; the classes are {', '.join(OP_CLASSES)} "
                         "(or \"*\")")
    return list(OP_CLASSES) if "*" in ops else list(dict.fromkeys(ops))


def object_patterns(v: list[str]) -> list[str]:
    """Object patterns as a rule or grant names them, checked and lower-cased (names match
    lower-cased)."""
    if not v:
        raise ValueError("name at least one object pattern (\"*\" for all)")
    for pattern in v:
        if not _GLOB.fullmatch(pattern):
            raise ValueError(f"malformed object pattern {pattern!r}: use schema.name with * and ? globs, "
                             "e.g. public.orders, sales.*, *")
    return [p.lower() for p in v]


class AgentSettings(BaseModel):
    """One agent identity. Give either a password (hashed at start-up, never stored) or a SCRAM
    verifier as PostgreSQL stores them (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`)."""

    model_config = ConfigDict(extra="forbid")

    password: SecretStr | None = None
    verifier: str | None = None
    databases: list[str] = Field(
        default_factory=list,
        description="databases this agent may open; empty means the upstream URL's database; "
        '["*"] means any',
    )
    mode: Mode | None = Field(default=None, description="this agent's mode; default: the `mode` setting")
    rules: list[RuleSettings] = Field(default_factory=list, description="this agent's rules, before the default "
                                      "`rules` (`[[agents.NAME.rules]]`)")
    upstream_role: str | None = Field(
        default=None, min_length=1, max_length=63,
        description="the upstream login role this agent's sessions use (created and managed by the proxy); "
        "default dbproxy_agent_<name>")

    @field_validator("verifier")
    @classmethod
    def _check_verifier(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("SCRAM-SHA-256$"):
            raise ValueError("verifier must be a SCRAM-SHA-256 verifier ('SCRAM-SHA-256$...')")
        return v


class LlmSettings(BaseModel):
    """The OpenAI-compatible endpoint asked for inverses the rules cannot make (`[llm]` in the
    config file, `DBPROXY_LLM_<KEY>` in the environment; `OPENAI_API_KEY` / `OPENAI_BASE_URL`
    when those are unset). Off while no API key is set; its proposals are used only when the
    sandbox verified them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base_url: str | None = Field(default=None, description="endpoint URL, e.g. http://localhost:11434/v1 "
                                 "(default: OpenAI's, or OPENAI_BASE_URL)")
    model: str = Field(default="gpt-4o-mini", description="model name the endpoint knows")
    api_key: SecretStr | None = Field(default=None, description="API key (default OPENAI_API_KEY); any "
                                      "non-empty value for endpoints without auth; unset = feature off")
    timeout: float = Field(default=30.0, gt=0, description="seconds per model request")
    max_attempts: int = Field(default=3, ge=1, le=10, description="proposals per transaction, each failure "
                              "fed back to the model")
    max_retries: int = Field(default=3, ge=0, le=10, description="retries of a request after 429, 5xx, "
                             "timeouts or connection errors (exponential backoff)")
    max_tokens: int = Field(default=2000, ge=100, description="tokens per answer")
    summaries: bool = Field(default=True, description="`dbproxy show` and the console also show the model's "
                            "plain-language summary of a transaction, marked as generated (its statements and "
                            "the first page of its diff are sent to the model)")


class NotifySettings(BaseModel):
    """Webhook notifications (`[notify]` in the config file, `DBPROXY_NOTIFY_<KEY>` in the
    environment): a JSON POST (Slack-compatible `text`, plus structured fields) when a transaction
    is held, a verification fails or an undo conflicts. Off while no URL is set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    webhook_url: SecretStr | None = Field(default=None, description="where to POST (http or https); a Slack "
                                          "incoming-webhook URL works as it is")
    agents: dict[str, SecretStr] = Field(default_factory=dict, description="per-agent URL overriding webhook_url; "
                                         'an empty string sends nothing for that agent')
    console_url: str | None = Field(default=None, description="base URL of the console in links "
                                    "(default http://ADMIN/console)")
    timeout: float = Field(default=5.0, gt=0, description="seconds per delivery attempt")
    max_attempts: int = Field(default=5, ge=1, le=20, description="attempts per notification (retried after "
                              "connection errors, timeouts, 429 and 5xx answers)")
    retry_delay: float = Field(default=1.0, gt=0, description="seconds before the first retry; doubled each time, "
                               "at most 60")

    @field_validator("webhook_url")
    @classmethod
    def _check_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        _http_url(v.get_secret_value())
        return v

    @field_validator("agents")
    @classmethod
    def _check_agent_urls(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for url in v.values():
            if url.get_secret_value():
                _http_url(url.get_secret_value())
        return v


def _http_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    upstream: SecretStr | None = Field(
        default=None,
        description="postgresql://USER:PASS@HOST:PORT/DB of the real database; "
        "empty starts the embedded PostgreSQL",
    )
    listen: str = "127.0.0.1:6432"
    admin: str = "127.0.0.1:6433"
    admin_token: SecretStr | None = Field(
        default=None, description="bearer token of the review API; default: generated into DATA_DIR/admin-token")
    mode: Mode = "hold"
    journal_passthrough: bool = Field(default=True, description="journal what pass-through agents write "
                                      "(costs a journal insert per writing transaction)")
    hold_timeout: float = Field(default=3600.0, gt=0, description="seconds a held transaction waits before "
                                "it is rolled back as expired")
    state_database: SecretStr | None = Field(
        default=None, description="postgresql:// URL of the database holding the journal (`dbproxy` schema); "
        "default: the upstream database")
    data_dir: Path = Field(default_factory=_default_data_dir)
    password_file: Path | None = Field(
        default=None, description="write a generated agent password to this file (mode 600) instead of printing it")
    agents: dict[str, AgentSettings] = Field(default_factory=dict)
    agent_role: str = Field(
        default="dbproxy_agents", min_length=1, max_length=63,
        description="the upstream role agents act as (it holds their table privileges); each agent logs in as a "
        "role of its own that is a member of it")
    rules: list[RuleSettings] = Field(default_factory=list, description="rules for every agent, after its own "
                                      "(`[[rules]]`)")
    approval_timeout: float = Field(default=300.0, gt=0, description="seconds a paused statement waits for a "
                                    "reviewer's approval before the agent gets 42501")
    held_lock_timeout: float = Field(default=5.0, gt=0, description="seconds an agent's statement may wait on a "
                                     "lock that a pending transaction holds before it fails with 55P03")
    agent_auth: Literal["scram-sha-256", "password"] = "scram-sha-256"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    max_message_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    connect_timeout: float = Field(default=10.0, gt=0)
    auth_timeout: float = Field(default=60.0, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    max_sessions: int = Field(default=100, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="`auto`: readable text when stderr is a terminal, JSON lines otherwise")
    log_statements: bool = False
    sandbox: Literal["auto", "local", "server", "testcontainers", "off"] = Field(
        default="auto", description="where inverses are verified before undo mode trusts them: `auto` "
        "(testcontainers when a Docker engine answers, else local), `local` (a warm PostgreSQL cluster of our "
        "own), `server` (scratch databases on `sandbox_server`), `testcontainers` (a Docker container), `off` "
        "(commit with unverified rule-made inverses)")
    sandbox_image: str | None = Field(
        default=None, description="image of the testcontainers backend (`{major}` is replaced by the upstream's "
        "major version); default postgres:{major}, else the one `dbproxy sandbox build-image` built")
    sandbox_server: SecretStr | None = Field(
        default=None, description="postgresql:// URL of a scratch server for `sandbox = server` (needs CREATEDB; "
        "never the upstream)")
    sandbox_dir: Path | None = Field(default=None, description="the local sandbox cluster's directory "
                                     "(default DATA_DIR/sandbox)")
    sandbox_sample_rows: int = Field(default=50, ge=0, description="random rows per sampled table")
    sandbox_neighbours: int = Field(default=50, ge=0, description="referencing rows per foreign key of an "
                                    "affected table")
    sandbox_mask: list[str] = Field(default_factory=list, description="tables whose sampled context rows leave "
                                    "the upstream with non-key values replaced (\"schema.table\" or \"table\"; "
                                    "comma-separated in the environment)")
    sandbox_timeout: float = Field(default=30.0, gt=0, description="seconds a verification may take")
    verify_cache: bool = Field(default=True, description="reuse a verified result for the same statement shape "
                               "and the same catalog of the touched tables")
    ddl_snapshot_limit: str = Field(default="1000000 rows, 1GiB", description="data kept before DDL per "
                                    "transaction (rows of dropped tables, values of dropped or retyped columns), "
                                    "e.g. \"1000000 rows, 1GiB\"; above it the transaction is held for review")
    llm: LlmSettings = Field(default_factory=LlmSettings, description="LLM-proposed inverses (see LlmSettings)")
    notify: NotifySettings = Field(default_factory=NotifySettings, description="webhook notifications "
                                   "(see NotifySettings)")

    @field_validator("sandbox_mask", mode="before")
    @classmethod
    def _split_mask(cls, v: object) -> object:
        return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v

    @field_validator("ddl_snapshot_limit")
    @classmethod
    def _check_snapshot_limit(cls, v: str) -> str:
        snapshot_limit(v)
        return v

    @property
    def ddl_limits(self) -> tuple[int, int]:
        """`ddl_snapshot_limit` as (rows, bytes)."""
        return snapshot_limit(self.ddl_snapshot_limit)

    @field_validator("listen")
    @classmethod
    def _check_host_port(cls, v: str) -> str:
        parse_host_port(v, what="address")
        return v

    @field_validator("admin")
    @classmethod
    def _check_admin(cls, v: str) -> str:
        return admin_host_port(v)

    @field_validator("upstream", "state_database", "sandbox_server")
    @classmethod
    def _check_upstream(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        parts = urlsplit(v.get_secret_value())
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return v

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_host_port(self.listen, what="listen")

    @property
    def admin_address(self) -> tuple[str, int]:
        return parse_host_port(self.admin, what="admin")


_UNITS = {"b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}


def snapshot_limit(text: str) -> tuple[int, int]:
    """"1000000 rows, 1GiB" -> (1000000, 1073741824); either part may come first."""
    rows = size = None
    for part in (p.strip().lower() for p in text.replace(";", ",").split(",")):
        m = re.fullmatch(r"([0-9][0-9_]*)\s*rows?", part)
        if m:
            rows = int(m.group(1).replace("_", ""))
            continue
        m = re.fullmatch(r"([0-9][0-9_.]*)\s*([kmgt]i?b|b)", part)
        if m:
            size = int(float(m.group(1).replace("_", "")) * _UNITS[m.group(2)])
            continue
        raise ValueError(f"expected something like \"1000000 rows, 1GiB\", got {part!r}")
    if rows is None or size is None:
        raise ValueError("give both a row count and a size, e.g. \"1000000 rows, 1GiB\"")
    return rows, size


_ENV_SCALARS = [name for name in Settings.model_fields if name not in ("agents", "llm", "notify", "rules")]
_LLM_ENV_FALLBACK = {"api_key": "OPENAI_API_KEY", "base_url": "OPENAI_BASE_URL"}


def load_settings(
    config_path: Path | None = None,
    cli: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Merge defaults < config file < environment < command line, then validate."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    config_path = config_path or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
    if config_path is not None:
        merged.update(_read_config_file(config_path))
    for name in _ENV_SCALARS:
        value = env.get(ENV_PREFIX + name.upper())
        if value is not None:
            merged[name] = value
    llm: dict[str, Any] = dict(merged.get("llm") or {})
    for name in LlmSettings.model_fields:
        value = env.get(f"{ENV_PREFIX}LLM_{name.upper()}")
        if value is None and name in _LLM_ENV_FALLBACK and name not in llm:
            value = env.get(_LLM_ENV_FALLBACK[name])
        if value is not None:
            llm[name] = value
    merged["llm"] = llm
    notify: dict[str, Any] = dict(merged.get("notify") or {})
    for name in NotifySettings.model_fields:
        value = env.get(f"{ENV_PREFIX}NOTIFY_{name.upper()}")
        if value is not None and name != "agents":
            notify[name] = value
    merged["notify"] = notify
    agents: dict[str, Any] = dict(merged.get("agents") or {})
    agents.update(parse_agent_specs(env.get(ENV_PREFIX + "AGENT", "").splitlines(), source="DBPROXY_AGENT"))
    cli = dict(cli or {})
    agents.update(parse_agent_specs(cli.pop("agent", None) or [], source="--agent"))
    if agents:
        merged["agents"] = agents
    merged.update({k: v for k, v in cli.items() if v is not None})
    try:
        return Settings.model_validate(merged)
    except ValidationError as e:
        raise SettingsError(_explain(e)) from None


def parse_agent_specs(specs: list[str], *, source: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        name, sep, password = spec.partition("=")
        if not sep or not name or not password:
            raise SettingsError(f"{source} expects NAME=PASSWORD, got {name or spec!r}=...")
        out[name] = {"password": password}
    return out


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SettingsError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SettingsError(f"config file {path} is not valid TOML: {e}") from None
    if _holds_secrets(data):
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SettingsError(
                f"config file {path} contains credentials but is accessible by group or others "
                f"(mode {stat.filemode(mode)}); run: chmod 600 {path}"
            )
    return data


def _holds_secrets(data: dict[str, Any]) -> bool:
    upstream = data.get("upstream")
    if isinstance(upstream, str) and urlsplit(upstream).password:
        return True
    for key in ("state_database", "sandbox_server"):
        url = data.get(key)
        if isinstance(url, str) and urlsplit(url).password:
            return True
    if data.get("admin_token"):
        return True
    llm = data.get("llm")
    if isinstance(llm, dict) and llm.get("api_key"):
        return True
    notify = data.get("notify")
    if isinstance(notify, dict) and (notify.get("webhook_url") or notify.get("agents")):
        return True  # webhook URLs carry their credentials (Slack's do)
    agents = data.get("agents")
    return isinstance(agents, dict) and any(
        isinstance(a, dict) and "password" in a for a in agents.values()
    )


def _explain(e: ValidationError) -> str:
    """One line: `invalid settings: listen: ...; max_sessions: ...`."""
    problems = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        problems.append(f"{where}: {msg}")
    return f"invalid setting{'s' if len(problems) > 1 else ''}: " + "; ".join(problems)
