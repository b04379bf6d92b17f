"""The reviewer's interface to a running proxy.

- `service`: `ReviewService`, the Protocol every reviewer action goes through (implemented by
  `dbproxy.hold.pending.PendingRegistry`), and `ReviewError`.
- `models`: what the API returns beyond the journal's records (diffs, decisions, undo outcomes).
- `api`: the admin HTTP API serving a `ReviewService`; `policy_api`: its policy endpoints (grants,
  approval requests, reload), serving the proxy's `dbproxy.policy.service.Policy`.
- `cli`: the reviewer's commands (`dbproxy pending|show|commit|...`), clients of the API;
  `policy_cli`: the policy's (`dbproxy grant|grants|revoke|requests|approve|reject|reload`);
  `textout`: how both print for people.
- `diff`: the row-level diff of a held transaction and the sessions it blocks; `image_diff`: the
  diff of a committed undo-mode transaction, from its captured row images.
- `events`: what happens to transactions under review (held, decided, undone, ...) and what the
  policy does (a statement waits for approval, a request is decided, a grant is given or
  revoked), fanned out to `metrics` (Prometheus, `GET /metrics`), `notify` (webhooks) and the
  console's live pages.
- `console/`: the review console, web pages served by the admin server (`policy_pages`: requests,
  grants and rules).
- `present`: statements as reviewers see them (secrets redacted, read-only ones marked), which
  rule or grant decided in a few words, what became of a grant.
- `jsonio`: JSON whose numbers keep PostgreSQL's digits.
- `offline`: `log` and `show` straight from the journal while the proxy is stopped.

May import: `protocol`, `config`, `net`, `auth`, `backend`, `journal`, `policy`.
"""
