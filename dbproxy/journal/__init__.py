"""The journal: the durable record of every agent transaction, in PostgreSQL.

- `records`: what is stored (transactions, statements, outcomes), as pydantic models.
- `store`: the `dbproxy` schema's tables and the `Journal` that writes and reads them.
- `passlog`: sans-IO matching of a pass-through session's statements with their answers.
- `tags`: what a command tag says (rows, whether it wrote).
- `params`: bind parameter values as the journal keeps them (readable, cut, secrets redacted).

May import: `protocol`, `config`, `net`, `auth`, `backend`; and `inverse` (the lexer).
"""
