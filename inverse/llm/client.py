"""One question to the model, answered as an `InverseAnswer` or as a recorded reason why not.

`LlmClient.ask(messages)` sends a chat completion to any OpenAI-compatible endpoint through the
`openai` package's `AsyncOpenAI` and returns `(answer, call)`. `call` is the journal's record of
what happened: model, tokens, latency, outcome and how many HTTP requests it took; `client.usage`
adds them up over the client's life. `ask` never raises for endpoint trouble; an unreachable or
rate-limited endpoint is an outcome, not a crash.

Retries are ours, not the library's (`max_retries=0` there), so they are bounded, counted and
observable: 429, 5xx, timeouts and connection errors are retried up to `config.max_retries`
times with exponential backoff and jitter, honouring a server's `Retry-After` (or OpenAI's
`retry-after-ms`) up to `config.retry_after_cap` seconds. Other 4xx are final, with two
exceptions learnt once per client: an endpoint that rejects `response_format` (many local
servers) is asked again without it, and one that wants `max_completion_tokens` instead of
`max_tokens` (newer OpenAI models) gets that.

The content must be one JSON object of the `InverseAnswer` shape; ```json fences``` and prose
around the object are tolerated. Anything else is outcome "malformed" with the reason, which the
synthesis loop shows the model on its next attempt.

The `AsyncOpenAI` connection pool belongs to the event loop that first uses it: create, use and
close a client on one loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from inverse.llm.answer import InverseAnswer
from inverse.llm.config import LlmConfig

__all__ = ["Call", "LlmClient", "Usage", "parse_answer", "parse_json"]

_RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_MAX_ERROR_CHARS = 500

T = TypeVar("T", bound=BaseModel)


@dataclass
class Call:
    """Journal record of one model call (one `ask`, however many HTTP requests it took)."""

    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    outcome: str  # "answer" | "malformed" | "timeout" | "http 429" | "http 503" | "unreachable" | "error"
    error: str | None
    http_attempts: int

    @property
    def endpoint_failed(self) -> bool:
        """The endpoint gave no content at all (after retries): asking again now is pointless."""
        return self.outcome not in ("answer", "malformed")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Call:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Usage:
    """What a client has cost so far: model calls (`ask`s, however many HTTP requests each took),
    HTTP requests, and the tokens the endpoint reported. A benchmark reads it before and after a case."""

    calls: int = 0
    http_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, call: Call) -> None:
        self.calls += 1
        self.http_requests += call.http_attempts
        self.prompt_tokens += call.prompt_tokens or 0
        self.completion_tokens += call.completion_tokens or 0

    def copy(self) -> Usage:
        return Usage(self.calls, self.http_requests, self.prompt_tokens, self.completion_tokens)

    def since(self, earlier: Usage) -> Usage:
        return Usage(self.calls - earlier.calls, self.http_requests - earlier.http_requests,
                     self.prompt_tokens - earlier.prompt_tokens, self.completion_tokens - earlier.completion_tokens)


def parse_answer(content: str | None) -> tuple[InverseAnswer | None, str | None]:
    """The model's text as an InverseAnswer, or (None, why not)."""
    return parse_json(content, InverseAnswer)


def parse_json(content: str | None, schema: type[T]) -> tuple[T | None, str | None]:
    """The model's text as one JSON object of `schema`, or (None, why not)."""
    if content is None or not content.strip():
        return None, "the reply had no content"
    text = content.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text.startswith("{"):
        # Prose around the object ("Here is the inverse: {...}"): take the outermost braces.
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            return None, f"the reply is not a JSON object: {_excerpt(content)}"
        text = text[start:end + 1]
    try:
        data = json.loads(text)
    except ValueError as e:
        return None, f"the reply is not valid JSON ({e}): {_excerpt(content)}"
    if not isinstance(data, dict):
        return None, f"the reply is JSON but not an object: {_excerpt(content)}"
    try:
        return schema.model_validate(data), None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'answer'}: {err['msg']}"
                             for err in e.errors()[:5])
        return None, f"the JSON does not have the required shape ({problems})"


def _excerpt(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _retry_after(error: openai.APIStatusError) -> float | None:
    """Seconds the server asks us to wait (retry-after-ms, Retry-After seconds or HTTP date)."""
    headers = error.response.headers
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _status_message(error: openai.APIStatusError) -> str:
    body = error.body
    message: Any = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
    return str(message or error.message)[:_MAX_ERROR_CHARS]


class LlmClient:
    def __init__(self, config: LlmConfig) -> None:
        self.config = config
        # The library's own retries stay off: ours are bounded, counted and visible in `Call`.
        self._client = openai.AsyncOpenAI(base_url=config.base_url, api_key=config.api_key or "none",
                                          timeout=config.timeout, max_retries=0)
        self._use_response_format = True
        self._tokens_param = "max_tokens"
        self.usage = Usage()

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> LlmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": self.config.model, "messages": messages,
                              self._tokens_param: self.config.max_tokens}
        if self._use_response_format:
            kw["response_format"] = {"type": "json_object"}
        if self.config.temperature is not None:
            kw["temperature"] = self.config.temperature
        return kw

    def _delay(self, retry: int, error: BaseException) -> float:
        if isinstance(error, openai.APIStatusError):
            asked = _retry_after(error)
            if asked is not None:
                return min(asked, self.config.retry_after_cap)
        base = min(self.config.max_backoff, self.config.backoff * 2 ** (retry - 1))
        return base * random.uniform(0.5, 1.0)  # jitter: clients that failed together do not return together

    def _adapt(self, error: openai.APIStatusError, kw: dict[str, Any]) -> bool:
        """After a 400: drop or rename one parameter the endpoint may dislike (each at most once per request)."""
        text = _status_message(error).lower()
        if "max_tokens" in text and "max_completion_tokens" in text and "max_tokens" in kw:
            self._tokens_param = "max_completion_tokens"  # for every later call too
            kw["max_completion_tokens"] = kw.pop("max_tokens")
            return True
        if "response_format" in kw:
            # Local servers often reject response_format (or only some of its types); without it the
            # prompt still asks for JSON, and parse_answer tolerates fences and prose. Remembered
            # for later calls once the endpoint said so, or once the request without it worked.
            del kw["response_format"]
            if "response_format" in text or "json" in text:
                self._use_response_format = False
            return True
        return False

    async def ask(self, messages: list[dict[str, str]]) -> tuple[InverseAnswer | None, Call]:
        """One answer from the model, or None with the reason in `Call`. Never raises for endpoint problems."""
        return await self.ask_for(messages, InverseAnswer)

    async def ask_for(self, messages: list[dict[str, str]], schema: type[T]) -> tuple[T | None, Call]:
        """`ask` for any answer shape (a pydantic model the reply's JSON object must validate as)."""
        answer, call = await self._ask_for(messages, schema)
        self.usage.add(call)
        return answer, call

    async def _ask_for(self, messages: list[dict[str, str]], schema: type[T]) -> tuple[T | None, Call]:
        t0 = time.perf_counter()
        attempts = 0
        retries = 0

        def call(outcome: str, error: str | None, usage: Any = None) -> Call:
            if error and self.config.api_key and len(self.config.api_key) >= 4:
                error = error.replace(self.config.api_key, "***")  # some servers echo the key they refused
            return Call(
                model=self.config.model,
                prompt_tokens=getattr(usage, "prompt_tokens", None),
                completion_tokens=getattr(usage, "completion_tokens", None),
                latency_ms=round((time.perf_counter() - t0) * 1000, 1),
                outcome=outcome,
                error=error,
                http_attempts=attempts,
            )

        kw = self._request(messages)
        while True:
            attempts += 1
            try:
                response = await self._client.chat.completions.create(**kw)
            except openai.APIStatusError as e:
                if e.status_code == 400 and self._adapt(e, kw):
                    continue  # not a retry of the same request: a different one (at most once per parameter)
                outcome, error = f"http {e.status_code}", _status_message(e)
                if (e.status_code in _RETRY_STATUS or e.status_code >= 500) and retries < self.config.max_retries:
                    retries += 1
                    await asyncio.sleep(self._delay(retries, e))
                    continue
                return None, call(outcome, error)
            except openai.APITimeoutError as e:
                if retries < self.config.max_retries:
                    retries += 1
                    await asyncio.sleep(self._delay(retries, e))
                    continue
                return None, call("timeout", f"no answer within {self.config.timeout:g} s")
            except openai.APIConnectionError as e:
                if retries < self.config.max_retries:
                    retries += 1
                    await asyncio.sleep(self._delay(retries, e))
                    continue
                cause = e.__cause__ or e
                return None, call("unreachable", f"{type(cause).__name__}: {cause}"[:_MAX_ERROR_CHARS])
            except Exception as e:
                # A 200 whose body is not a chat completion, a proxy's HTML page, and the like.
                return None, call("error", f"{type(e).__name__}: {e}"[:_MAX_ERROR_CHARS])
            break
        if "response_format" not in kw:
            self._use_response_format = False

        usage = getattr(response, "usage", None)
        try:
            choice = response.choices[0]
            content = choice.message.content
            finish = choice.finish_reason
        except (AttributeError, IndexError, TypeError):
            return None, call("malformed", "the response has no choices", usage)
        answer, why = parse_json(content, schema)
        if answer is None:
            if finish == "length":
                why = f"{why} (cut off at max_tokens={self.config.max_tokens})"
            return None, call("malformed", why, usage)
        return answer, call("answer", None, usage)
