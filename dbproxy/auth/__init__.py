"""Who may log in to the proxy.

- `agents`: agent identities, SCRAM-SHA-256 verifiers, the owner-only agent store.
- `scram`: the server side of SCRAM-SHA-256(-PLUS), sans-IO.
- `reviewers`: reviewers' names and tokens (only hashes kept), token -> reviewer for the admin API.

May import: `protocol`, `config`, `net`.
"""
