#!/bin/sh
# Run once by the postgres image at first start: the database the agents work in ("app") and the
# agents' role, an ordinary NOLOGIN role that may create tables in its public schema. The proxy
# logs in as the superuser (its own role: it owns the journal and installs capture) and gives each
# agent a login role of its own that acts as dbproxy_agents, so agents never hold the superuser's
# privileges nor reach the proxy's state.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<'SQL'
CREATE ROLE dbproxy_agents NOLOGIN NOINHERIT;
CREATE DATABASE app;
\connect app
GRANT USAGE, CREATE ON SCHEMA public TO dbproxy_agents;
SQL
