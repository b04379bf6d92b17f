"""LLM-proposed inverses for what the rules cannot invert (README, design decision 6).

The rules (`inverse.undo_plan`, `inverse.ddl_rules`) give exact inverses from row images for most
transactions. For the long tail (DDL whose inverse needs the state from before, statements the
rules do not model) a model may *propose* an inverse; nothing it says is trusted until the
sandbox has verified it. The pieces, each usable alone:

- `config.LlmConfig`: endpoint, model, key, timeouts, retries (`from_env` reads OPENAI_*).
- `prompt.Request` / `prompt.messages`: what the model is shown, bounded, plus feedback.
- `client.LlmClient.ask`: one chat completion -> `answer.InverseAnswer` or a recorded reason
  (`client.Call`), with bounded, counted retries.
- `guard.check`: rejects inadmissible SQL (other tables, transaction control, settings, DO,
  COPY, file/network functions, ...) before it reaches any database.
- `synthesize.synthesize`: ask -> check -> verify, failures fed back, `Outcome` for the journal;
  verification is a callback, so this package imports neither `sandbox` nor `dbproxy`.
- `cache.AnswerCache`: trusted outcomes reused by key.
- `synthesize.summarize`: optional GENERATED, unverified summary of a transaction for the
  reviewer (`answer.Summary`, shown through `Summary.label()`).

Tests talk to a local scripted OpenAI-compatible server (tests/fake_llm.py), never to a hosted model.
"""

from inverse.llm.answer import InverseAnswer, Summary
from inverse.llm.cache import AnswerCache
from inverse.llm.client import Call, LlmClient
from inverse.llm.config import LlmConfig
from inverse.llm.guard import check
from inverse.llm.prompt import MAX_DDL_CHARS, MAX_IMAGES, Request, messages
from inverse.llm.synthesize import Attempt, Outcome, Verify, request_key, summarize, synthesize

__all__ = [
    "MAX_DDL_CHARS",
    "MAX_IMAGES",
    "AnswerCache",
    "Attempt",
    "Call",
    "InverseAnswer",
    "LlmClient",
    "LlmConfig",
    "Outcome",
    "Request",
    "Summary",
    "Verify",
    "check",
    "messages",
    "request_key",
    "summarize",
    "synthesize",
]
