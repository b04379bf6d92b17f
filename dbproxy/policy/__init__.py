"""Policy: what an agent may do, decided per agent, object and operation class.

- `rules`: the rules from the settings, compiled; matching by operation class and object glob;
  which classes can never be granted permanently (nothing without an exact inverse).
- `models`: grants and approval requests as stored and as the review API shows them.
- `store`: grants and requests in the state database (`dbproxy.grants`, `dbproxy.requests`).
- `engine`: the decision for a statement (deny, pause) and for a transaction at its COMMIT
  (allow, ask, deny, or the agent's mode when no rule matches), and who made it.
- `service`: the running proxy's policy: rules reloaded without a restart, grants cached,
  paused statements waiting for a reviewer.

May import: `protocol`, `config`, `net`, `auth`, `backend`, `journal`; and `inverse` (operation
classes of a statement).

Sits above `journal` (its tables live next to the journal's) and below `review` (whose API
serves grants and requests) and `hold` (whose sessions ask it).
"""
