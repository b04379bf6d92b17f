"""Where the model for LLM-proposed inverses lives, and how patiently to talk to it.

One frozen `LlmConfig` per proxy (or benchmark run). The endpoint is any OpenAI-compatible chat
completions server: OpenAI itself, vLLM, Ollama, a llama.cpp server. The API key stays in this
object and in the `Authorization` header the client sends: it is left out of `repr()`, and
`describe()` (what logs and notices show) never includes it, nor credentials written into the
base URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class LlmConfig:
    base_url: str | None = None  # None: OpenAI's own endpoint
    model: str = "gpt-4o-mini"
    # repr=False: a config printed in a traceback or a log line must not leak the key.
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0  # seconds per HTTP request
    max_attempts: int = 3  # propose -> check -> verify rounds; each failure is fed back to the next
    max_retries: int = 3  # extra HTTP tries after a 429 / 5xx / timeout / connection error
    max_tokens: int = 2000
    backoff: float = 0.5  # first retry delay in seconds; doubles per retry, with jitter
    max_backoff: float = 8.0  # cap of the exponential delay
    retry_after_cap: float = 20.0  # a server's Retry-After is honoured up to this many seconds
    temperature: float | None = None  # None: the endpoint's default (some models accept no other)

    @property
    def enabled(self) -> bool:
        """Whether to ask a model at all. A local endpoint without auth still needs a non-empty
        key (any text, e.g. "none"): an unset key is how a deployment says "no LLM"."""
        return bool(self.api_key)

    @classmethod
    def from_env(cls, *, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 environ: Mapping[str, str] | None = None, **kw: Any) -> LlmConfig:
        """Explicit values win; otherwise `OPENAI_API_KEY` and `OPENAI_BASE_URL` (the names the
        `openai` client and most compatible servers document). `environ` defaults to os.environ."""
        env = os.environ if environ is None else environ
        return cls(
            base_url=base_url or env.get("OPENAI_BASE_URL") or None,
            model=model or cls.model,
            api_key=api_key or env.get("OPENAI_API_KEY") or None,
            **kw,
        )

    def describe(self) -> str:
        """"model gpt-4o-mini at https://api.openai.com/v1": for logs and notices, never the key."""
        return f"model {self.model} at {_public_url(self.base_url or DEFAULT_BASE_URL)}"


def _public_url(url: str) -> str:
    """The URL without user:password@ and without a query (some gateways take ?api-key=...)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
