"""The real PostgreSQL behind the proxy, reached with credentials only the proxy holds.

- `upstream`: parse the upstream URL, connect (TLS with libpq's sslmode semantics, the server's
  authentication), send cancels.
- `embedded`: the embedded default, a cluster in the data directory from the bundled binaries.
- `agent_roles`: each agent's own upstream login role, and the check that the agents' roles
  cannot reach the proxy's state or each other's sessions.

May import: `protocol`, `config`, `net`, `auth`; and the `sandbox.pgcluster` helper.
"""
