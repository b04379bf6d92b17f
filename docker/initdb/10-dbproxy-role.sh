#!/bin/sh
# Run once by the postgres image at first start: an ordinary role for the proxy's upstream
# connections, owning the database the agents work in. Not a superuser, so functions and DO
# blocks run through the proxy cannot reach server programs or files (see the README).
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" -v pw="$DBPROXY_ROLE_PASSWORD" <<'SQL'
CREATE ROLE dbproxy_agents LOGIN PASSWORD :'pw';
CREATE DATABASE app OWNER dbproxy_agents;
SQL
