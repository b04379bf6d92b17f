"""inverse: pure SQL knowledge (statement classification, capture plans, inverse synthesis).

Imports neither `dbproxy` nor `sandbox`. Filled in by the hold and undo work.

- `inverse.classify`: split a simple-query string into statements as PostgreSQL does, and classify
  each one conservatively (kind, read-only, transaction control, escape and non-transactional
  reasons, tables written) for the proxy's policy.
"""
