"""What the proxy's upstream role may do that no classifier can stop.

Hold mode keeps every write inside a transaction, and refuses statements that could escape it.
But code inside functions and DO blocks is invisible to the classifier, and some privileges act
outside any transaction the moment they are used: running server programs (COPY ... PROGRAM),
writing and reading server files (COPY to/from a file, lo_export, pg_read_file), and everything a
superuser can do. The only real defence is a role without them; this module says which of them
the configured role has, so that `serve` can warn at start-up.
"""

from __future__ import annotations

import asyncpg

_CHECK = """
SELECT r.rolsuper,
       pg_catalog.pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER'),
       pg_catalog.pg_has_role(current_user, 'pg_write_server_files', 'MEMBER'),
       pg_catalog.pg_has_role(current_user, 'pg_read_server_files', 'MEMBER')
FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
"""


async def risky_privileges(dsn: str) -> list[str]:
    """Privileges of the upstream role that act outside transactions, as readable phrases."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow(_CHECK)
    finally:
        await conn.close()
    if row is None:
        return []
    superuser, program, write, read = row
    if superuser:
        return ["it is a superuser (functions and DO blocks it runs can do anything, outside any transaction)"]
    out = []
    if program:
        out.append("it may run server programs (pg_execute_server_program)")
    if write:
        out.append("it may write server files (pg_write_server_files)")
    if read:
        out.append("it may read server files (pg_read_server_files)")
    return out
