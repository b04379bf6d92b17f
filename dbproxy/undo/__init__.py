"""Undo mode: commit with an exact inverse, and undo or redo later.

- `install`: put capture (triggers, event triggers, log tables) into a database, or take it out.
- `commit`: at an agent's COMMIT, decide between committing with a verified inverse and holding.
- `verification`: the sandbox gate as the running proxy uses it (backends, sampling, cache, model).
- `apply`: undo and redo on the real database, with conflict checks, in one transaction.
- `service`: the reviewer's undo and redo, journaled.
- `reverify`: `dbproxy verify ID` for committed transactions.

May import: `protocol`, `config`, `net`, `auth`, `backend`, `journal`, `review`; and `inverse`,
`sandbox`. Statements inside a held transaction are run through `commit.Injector`, so nothing here
knows hold mode.
"""
