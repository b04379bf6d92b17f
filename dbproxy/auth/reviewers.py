"""Reviewers are people with names: each has a token of their own for the admin API.

`dbproxy reviewer add NAME` makes a token, prints it once and keeps only its SHA-256 in
`DATA_DIR/reviewers.json` (owner-only, like the agent store); `reviewer list` and `reviewer
remove NAME` read and change that file. A running proxy notices the file changed and re-reads it,
so a removed reviewer's token stops working at once (401), with no restart.

The token decides who a decision is recorded under: a request may not claim another name. The
single admin token of earlier versions (`admin_token`, `DATA_DIR/admin-token`) keeps working as
the reviewer `admin`.

Tokens carry 256 random bits, so a fast hash is enough to keep the file from being a list of
passwords; lookups compare hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

STORE_FILE = "reviewers.json"
ADMIN = "admin"
TOKEN_PREFIX = "dbpr_"
#: Names the journal already uses for who decided something other than a person.
RESERVED = frozenset({ADMIN, "agent", "expiry", "restart", "upstream", "proxy"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")


class ReviewerError(ValueError):
    """A reviewer name or the store is not usable; the message says why."""


@dataclass(frozen=True)
class Reviewer:
    name: str
    token_sha256: str
    created_at: str


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ReviewerError(f"reviewer names are 1 to 64 letters, digits and _.@+- (starting with a letter or "
                            f"digit), got {name!r}")
    if name.lower() in RESERVED:
        raise ReviewerError(f"{name!r} is reserved (the journal uses it for decisions no reviewer made)")
    return name


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def load(data_dir: Path) -> dict[str, Reviewer]:
    path = Path(data_dir) / STORE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ReviewerError(f"cannot read {path}: {e}") from None
    return {name: Reviewer(name, entry["sha256"], entry.get("created_at", ""))
            for name, entry in raw.get("reviewers", {}).items()}


def _save(data_dir: Path, reviewers: dict[str, Reviewer]) -> None:
    path = Path(data_dir) / STORE_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{STORE_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    body = {"reviewers": {r.name: {"sha256": r.token_sha256, "created_at": r.created_at}
                          for r in sorted(reviewers.values(), key=lambda r: r.name)}}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def add(data_dir: Path, name: str) -> str:
    """Create reviewer `name` and return its token (shown once; only its hash is kept)."""
    check_name(name)
    reviewers = load(data_dir)
    if name in reviewers:
        raise ReviewerError(f"reviewer {name!r} exists already (remove it first to give it a new token)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    reviewers[name] = Reviewer(name, _digest(token), datetime.now(UTC).isoformat(timespec="seconds"))
    _save(data_dir, reviewers)
    return token


def remove(data_dir: Path, name: str) -> bool:
    reviewers = load(data_dir)
    if reviewers.pop(name, None) is None:
        return False
    _save(data_dir, reviewers)
    return True


class Reviewers:
    """Token -> reviewer name, for the admin API. Re-reads the store when it changes."""

    def __init__(self, data_dir: Path | None, admin_token: str | None) -> None:
        self.path = Path(data_dir) / STORE_FILE if data_dir is not None else None
        self._admin = _digest(admin_token) if admin_token else None
        self._by_digest: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None

    def _refresh(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and (stamp is not None or not self._by_digest):
            return
        try:
            self._by_digest = {r.token_sha256: r.name for r in load(self.path.parent).values()}
        except ReviewerError:
            self._by_digest = {}  # an unreadable store admits nobody but the admin
        self._stamp = stamp

    def who(self, token: str) -> str | None:
        """The reviewer `token` belongs to, or None."""
        digest = _digest(token.strip())
        if self._admin is not None and hmac.compare_digest(digest, self._admin):
            return ADMIN
        self._refresh()
        for known, name in self._by_digest.items():
            if hmac.compare_digest(digest, known):
                return name
        return None
