"""Agent identities: who may log in to the proxy, checked against SCRAM-SHA-256 verifiers.

Passwords are never stored: a configured password is turned into a verifier at start-up, and
agents created by the proxy itself (`dbproxy serve` with none configured, `dbproxy agent add`) are
kept in `DATA_DIR/agents.json` (owner-only) as verifiers in PostgreSQL's own text format, so a
verifier can be copied from or into `pg_authid.rolpassword`.

Unknown user names get a mock exchange with a stable fake salt, so a client cannot tell an unknown
agent from a wrong password (PostgreSQL does the same).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from scramp import ScramMechanism

from dbproxy.config.settings import AgentSettings

SCRAM = ScramMechanism("SCRAM-SHA-256")
DEFAULT_ITERATIONS = 4096
STORE_NAME = "agents.json"


@dataclass(frozen=True)
class Verifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(cls, password: str, *, iterations: int = DEFAULT_ITERATIONS,
                      salt: bytes | None = None) -> Verifier:
        salt_b, stored, server, i = SCRAM.make_auth_info(password, iteration_count=iterations, salt=salt)
        return cls(i, salt_b, stored, server)

    @classmethod
    def parse(cls, text: str) -> Verifier:
        try:
            mech, rest = text.split("$", 1)
            iter_salt, keys = rest.split("$", 1)
            iterations, salt = iter_salt.split(":", 1)
            stored, server = keys.split(":", 1)
            if mech != "SCRAM-SHA-256":
                raise ValueError(mech)
            return cls(int(iterations), base64.b64decode(salt, validate=True),
                       base64.b64decode(stored, validate=True), base64.b64decode(server, validate=True))
        except (ValueError, TypeError) as e:
            raise ValueError("not a SCRAM-SHA-256 verifier") from e

    def __str__(self) -> str:
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        return (f"SCRAM-SHA-256${self.iterations}:{b64(self.salt)}$"
                f"{b64(self.stored_key)}:{b64(self.server_key)}")

    def check_password(self, password: str) -> bool:
        """For cleartext `password` auth: recompute the stored key and compare in constant time."""
        candidate = Verifier.from_password(password, iterations=self.iterations, salt=self.salt)
        return hmac.compare_digest(candidate.stored_key, self.stored_key)

    def auth_info(self) -> tuple[bytes, bytes, bytes, int]:
        return self.salt, self.stored_key, self.server_key, self.iterations


@dataclass(frozen=True)
class Agent:
    name: str
    verifier: Verifier
    databases: tuple[str, ...] = ()
    mode: str | None = None  # None: the proxy's default mode
    upstream_role: str | None = None  # None: dbproxy_agent_<name> (see dbproxy.backend.agent_roles)

    def may_open(self, database: str, default_database: str) -> bool:
        allowed = self.databases or (default_database,)
        return "*" in allowed or database in allowed


@dataclass
class AgentRegistry:
    agents: dict[str, Agent] = field(default_factory=dict)
    _mock_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def get(self, name: str) -> Agent | None:
        return self.agents.get(name)

    def mock_verifier(self, name: str) -> Verifier:
        """A verifier nobody knows the password of, with a salt stable per user name."""
        salt = hmac.new(self._mock_secret, name.encode(), hashlib.sha256).digest()[:16]
        return Verifier(DEFAULT_ITERATIONS, salt, secrets.token_bytes(32), secrets.token_bytes(32))

    @classmethod
    def build(cls, configured: dict[str, AgentSettings], data_dir: Path) -> AgentRegistry:
        reg = cls()
        for name, v in load_store(data_dir).items():
            reg.agents[name] = Agent(name, v)
        for name, cfg in configured.items():
            if cfg.verifier:
                verifier = Verifier.parse(cfg.verifier)
            elif cfg.password is not None:
                verifier = Verifier.from_password(cfg.password.get_secret_value())
            elif name in reg.agents:
                verifier = reg.agents[name].verifier
            else:
                raise ValueError(f"agent {name!r} has neither a password nor a verifier")
            reg.agents[name] = Agent(name, verifier, tuple(cfg.databases), cfg.mode, cfg.upstream_role)
        return reg


def load_store(data_dir: Path) -> dict[str, Verifier]:
    path = data_dir / STORE_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {name: Verifier.parse(v) for name, v in data.get("agents", {}).items()}


def add_to_store(data_dir: Path, name: str, password: str | None = None, *,
                 password_file: Path | None = None) -> str:
    """Create (or replace) a stored agent; returns its password, which is not kept anywhere (but
    in `password_file`, when given: written with mode 600, so that the password need not pass
    through a terminal or a service log). The file is opened before the agent is created, so a
    file that cannot be written costs nothing."""
    fd = None
    if password_file is not None:
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        if fd is not None:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        password = password or secrets.token_urlsafe(18)
        stored = {n: str(v) for n, v in load_store(data_dir).items()}
        stored[name] = str(Verifier.from_password(password))
        _write_private(data_dir / STORE_NAME, json.dumps({"agents": stored}, indent=2) + "\n")
        if fd is not None:
            os.write(fd, (password + "\n").encode())
    except BaseException:
        if fd is not None and password_file is not None:
            os.close(fd)
            fd = None
            password_file.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return password


def remove_from_store(data_dir: Path, name: str) -> bool:
    stored = {n: str(v) for n, v in load_store(data_dir).items()}
    if stored.pop(name, None) is None:
        return False
    _write_private(data_dir / STORE_NAME, json.dumps({"agents": stored}, indent=2) + "\n")
    return True


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
