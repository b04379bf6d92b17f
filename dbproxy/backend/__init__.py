"""The real PostgreSQL behind the proxy, reached with credentials only the proxy holds.

- `upstream`: parse the upstream URL, connect (TLS with libpq's sslmode semantics, the server's
  authentication), send cancels.
- `embedded`: the embedded default, a cluster in the data directory from the bundled binaries.
- `privileges`: what the upstream role may do that no classifier can stop.

May import: `protocol`, `config`, `net`, `auth`; and the `sandbox.pgcluster` helper.
"""
