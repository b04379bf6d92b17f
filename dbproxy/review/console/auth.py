"""Who is signed in to the console, and the checks every request passes.

A reviewer signs in with their own token (`dbproxy reviewer add NAME`; the admin token is the
reviewer `admin`), which the admin API's reviewer store (`dbproxy.auth.reviewers.Reviewers.who`)
turns into a name. A successful sign-in gets a session: a random id in an HttpOnly,
SameSite=Strict cookie (`dbproxy_console`), mapped in memory to the reviewer, the token's owner at
every request (a reviewer removed meanwhile is signed out at once), a CSRF token and its expiry.
Sessions live in the proxy process: a restart signs everyone out.

CSRF: every state-changing form carries the session's CSRF token (a hidden `csrf` field, compared
in constant time), and a POST whose `Origin` names another site is refused as well. The sign-in
form, which has no session yet, uses a double-submit cookie (`dbproxy_signin`) instead.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

SESSION_COOKIE = "dbproxy_console"
SIGNIN_COOKIE = "dbproxy_signin"
#: A session ends this long after sign-in, or after this long without a request.
SESSION_LIFETIME = 8 * 3600.0
SESSION_IDLE = 3600.0
MAX_SESSIONS = 1000


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two tokens (None never matches)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


@dataclass
class ConsoleSession:
    reviewer: str
    token: str = field(default="", repr=False)  # checked again at every request (removed reviewers)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    #: messages for the next page shown (after an action's redirect): (level, text)
    flash: list[tuple[str, str]] = field(default_factory=list)

    def expired(self, now: float) -> bool:
        return now - self.created > SESSION_LIFETIME or now - self.seen > SESSION_IDLE


class Sessions:
    """Signed-in console sessions, by the random id in their cookie."""

    def __init__(self) -> None:
        self._by_id: dict[str, ConsoleSession] = {}

    def create(self, reviewer: str, token: str = "") -> tuple[str, ConsoleSession]:
        now = time.monotonic()
        for sid in [s for s, v in self._by_id.items() if v.expired(now)]:
            del self._by_id[sid]
        while len(self._by_id) >= MAX_SESSIONS:  # the oldest go first
            del self._by_id[min(self._by_id, key=lambda s: self._by_id[s].created)]
        sid = secrets.token_urlsafe(32)
        session = ConsoleSession(reviewer, token)
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> ConsoleSession | None:
        """The live session with this id (its idle clock restarts), or None."""
        if not sid:
            return None
        session = self._by_id.get(sid)
        if session is None:
            return None
        now = time.monotonic()
        if session.expired(now):
            del self._by_id[sid]
            return None
        session.seen = now
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def __len__(self) -> int:
        return len(self._by_id)
