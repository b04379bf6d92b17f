"""Hold mode: agent writes stay in an open upstream transaction until a person decides.

- `protocol`: the sans-IO state machine: plans for one client cycle, routing of the answers.
- `connection`: `HeldConnection`, the upstream connection and the chain held on it.
- `session`: `HoldSession`, the agent's client loop over a held connection.
- `fastpath`: which client cycles may skip that loop: reads outside any transaction.
- `pending`: `PendingRegistry`, the review queue (implements `review.service.ReviewService`).
- `reverify`: `dbproxy verify ID` for held transactions.

Lower modules reach higher ones through Protocols defined beside them (`connection.ReviewQueue`,
`connection.Attached`, `session.SessionHost`), never by import.

May import: every folder above it in the list in `dbproxy/__init__.py`; `inverse`, `sandbox`.
"""
