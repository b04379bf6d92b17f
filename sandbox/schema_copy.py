"""The upstream's schema, reproduced in a sandbox database.

`fingerprint` reads a digest of the upstream catalog's user objects (content, not storage: a
TRUNCATE or VACUUM FULL does not change it, any DDL does). `dump` takes the schema with the
upstream's own `pg_dump` format and filters out what a sandbox must not or cannot have; `load`
replays it into an empty sandbox database and reports every object that did not load, so a
verification that needs one of them says "could not verify" and names it.

What is left out, and why:
- foreign servers, user mappings, subscriptions, publications: they hold or use credentials and
  addresses of other systems, and a sandbox never holds credentials;
- foreign tables: they have no local rows to sample (a transaction touching one cannot be
  verified, and says so);
- extensions the sandbox server does not have (their objects then fail to load, and are named);
- ownership and privileges: the sandbox has one role, and GRANTs are not part of what an inverse
  of rows restores.

The whole user schema is copied (a superset of "the touched tables and their dependencies"): it
is taken once per schema version and reused, so its size costs once, not per verification.
The upstream password reaches `pg_dump` through its environment, never its command line.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

#: Catalog content of user objects (oid >= 16384, temporary schemas excluded), as one md5. Storage
#: fields (relfilenode, relpages, statistics) are left out, so data operations do not change it.
#: Every catalog a DDL statement can change and the copy holds is in it: comments, sequence
#: options and extended statistics too (a COMMENT alone must refresh the copy; INHERIT shows in
#: the columns' rows). Privileges, owners and default privileges need not be: the copy has none.
FINGERPRINT_SQL = r"""
WITH ns AS (SELECT oid FROM pg_catalog.pg_namespace
            WHERE nspname !~ '^pg_(toast_)?temp_' AND nspname <> 'pg_toast'),
     rel AS (SELECT c.oid, c.relname, c.relnamespace, c.relkind, c.relnatts, c.relchecks, c.relhastriggers,
                    c.relrowsecurity, c.reloftype, c.reloptions, c.relispartition
             FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
             WHERE c.oid >= 16384 AND c.relpersistence <> 't')
SELECT pg_catalog.md5(pg_catalog.string_agg(x, E'\n' ORDER BY x)) FROM (
  SELECT 'c' || r::text FROM rel r
  UNION ALL SELECT 'a' || a.attrelid || ':' || a.attnum || ':' || a.xmin FROM pg_catalog.pg_attribute a
            JOIN rel ON rel.oid = a.attrelid WHERE a.attnum > 0
  UNION ALL SELECT 'd' || d.oid || ':' || d.xmin FROM pg_catalog.pg_attrdef d JOIN rel ON rel.oid = d.adrelid
  UNION ALL SELECT 'k' || k.oid || ':' || k.xmin FROM pg_catalog.pg_constraint k JOIN ns ON ns.oid = k.connamespace
            WHERE k.oid >= 16384
  UNION ALL SELECT 'i' || i.indexrelid || ':' || i.xmin FROM pg_catalog.pg_index i JOIN rel ON rel.oid = i.indrelid
  UNION ALL SELECT 'g' || g.oid || ':' || g.xmin FROM pg_catalog.pg_trigger g JOIN rel ON rel.oid = g.tgrelid
  UNION ALL SELECT 'w' || w.oid || ':' || w.xmin FROM pg_catalog.pg_rewrite w JOIN rel ON rel.oid = w.ev_class
  UNION ALL SELECT 'p' || p.oid || ':' || p.xmin FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
            WHERE p.oid >= 16384
  UNION ALL SELECT 't' || t.oid || ':' || t.xmin FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
            WHERE t.oid >= 16384
  UNION ALL SELECT 'e' || e.oid || ':' || e.xmin FROM pg_catalog.pg_enum e WHERE e.oid >= 16384
  UNION ALL SELECT 'n' || n.oid || ':' || n.xmin FROM pg_catalog.pg_namespace n JOIN ns ON ns.oid = n.oid
            WHERE n.oid >= 16384
  UNION ALL SELECT 'x' || x.oid || ':' || x.xmin FROM pg_catalog.pg_extension x
  UNION ALL SELECT 'v' || v.oid || ':' || v.xmin FROM pg_catalog.pg_event_trigger v
  UNION ALL SELECT 'P' || o.oid || ':' || o.xmin FROM pg_catalog.pg_policy o
  UNION ALL SELECT 'D' || m.classoid || ':' || m.objoid || ':' || m.objsubid || ':' || pg_catalog.md5(m.description)
            FROM pg_catalog.pg_description m WHERE m.objoid >= 16384
  UNION ALL SELECT 'q' || q.seqrelid || ':' || q.xmin FROM pg_catalog.pg_sequence q JOIN rel ON rel.oid = q.seqrelid
  UNION ALL SELECT 's' || t.oid || ':' || t.xmin FROM pg_catalog.pg_statistic_ext t JOIN rel ON rel.oid = t.stxrelid
) s(x)
"""

#: pg_restore table-of-contents entry types a sandbox never gets (see the module docstring).
_NEVER = ("SERVER ", "USER MAPPING ", "FOREIGN DATA WRAPPER ", "SUBSCRIPTION ", "PUBLICATION ",
          "PUBLICATION TABLE ", "PUBLICATION TABLES IN SCHEMA ", "FOREIGN TABLE ", "DATABASE ",
          "DATABASE PROPERTIES ", "ACL ", "DEFAULT ACL ")
_TOC_ENTRY = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_PSQL_ERROR = re.compile(r"^psql:[^:]*:(\d+): ERROR:\s*(.*)$")


class SchemaError(Exception):
    """The schema could not be taken from the upstream (pg_dump failed)."""


@dataclass
class SchemaDump:
    sql: str
    left_out: list[str] = field(default_factory=list)  # "FOREIGN TABLE public.x", "EXTENSION postgis ..."
    major: int = 0  # upstream server major version


def split_password(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without its password, and the environment that passes it instead."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, {}
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (unquote(parts.username or "") and f"{parts.username}@") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), {"PGPASSWORD": unquote(parts.password)}


async def fingerprint(con: asyncpg.Connection) -> str:
    return str(await con.fetchval(FINGERPRINT_SQL))


async def _run(cmd: list[str], *, env: dict[str, str], stdin: bytes | None = None,
               limit: float = 120) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C", "PGCONNECT_TIMEOUT": "10", **env})
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SchemaError(f"{Path(cmd[0]).name} did not finish in {limit:.0f}s") from None
    except asyncio.CancelledError:
        proc.kill()  # the verification's deadline passed: do not leave pg_dump running
        raise
    return proc.returncode or 0, out, err


async def dump(upstream_url: str, bin_dir: Path, *, available_extensions: set[str]) -> SchemaDump:
    """The upstream's schema as SQL a sandbox can replay (`pg_dump -Fc --schema-only`, then
    `pg_restore` of the entries a sandbox may have)."""
    url, env = split_password(upstream_url)
    code, custom, err = await _run([str(bin_dir / "pg_dump"), "--schema-only", "-Fc", "--lock-wait-timeout=2000",
                                       "--dbname", url], env=env)
    if code != 0:
        raise SchemaError("pg_dump could not read the upstream schema: " + err.decode(errors="replace").strip())
    restore = str(bin_dir / "pg_restore")
    code, toc, err = await _run([restore, "-l"], env={}, stdin=custom)
    if code != 0:
        raise SchemaError("pg_restore could not list the dump: " + err.decode(errors="replace").strip())
    keep: list[str] = []
    left_out: list[str] = []
    for line in toc.decode().splitlines():
        m = _TOC_ENTRY.match(line)
        if m is None:
            continue
        what = m.group(4)
        if what.startswith(_NEVER):
            left_out.append(" ".join(what.split()[:-1]))  # without the owner
            continue
        if what.startswith("EXTENSION - "):
            name = what.split()[2]
            if name not in available_extensions:
                left_out.append(f"EXTENSION {name} (not available in the sandbox)")
                continue
        keep.append(line)
    list_file = "\n".join(keep) + "\n"
    # pg_restore reads the list from a file; the dump itself comes on stdin.
    with tempfile.NamedTemporaryFile("w", suffix=".toc", delete=False) as f:
        f.write(list_file)
    try:
        code, sql, err = await _run([restore, "--no-owner", "--no-privileges", "-L", f.name, "-f", "-"], env={},
                                    stdin=custom)
    finally:
        os.unlink(f.name)
    if code != 0:
        raise SchemaError("pg_restore could not write the schema: " + err.decode(errors="replace").strip())
    return SchemaDump(sql.decode(), left_out)


async def load(sandbox_url: str, bin_dir: Path, schema: SchemaDump, *, role: str | None = None) -> list[str]:
    """Replay `schema` into the (empty) sandbox database, as `role` when given (`SET ROLE` at
    connection start); returns the errors, one line each, with the statement that failed, so
    the objects that did not load can be named."""
    url, env = split_password(sandbox_url)
    if role:
        env["PGOPTIONS"] = f"-c role={role}"
    code, _out, err = await _run(
        [str(bin_dir / "psql"), "--no-psqlrc", "-q", "-X", "-v", "ON_ERROR_STOP=0", "-d", url, "-f", "-"],
        env=env, stdin=schema.sql.encode())
    errors: list[str] = []
    lines = schema.sql.splitlines()
    for line in err.decode(errors="replace").splitlines():
        m = _PSQL_ERROR.match(line)
        if m:
            n = int(m.group(1))
            statement = lines[n - 1].strip() if 0 < n <= len(lines) else ""
            errors.append(f"{m.group(2)} (in: {statement[:200]})")
    if code not in (0, 3) and not errors:
        raise SchemaError("psql could not load the schema into the sandbox: " + err.decode(errors="replace").strip())
    return errors


async def ddl_text(sandbox_url: str, bin_dir: Path, *, exclude_schema: str | None = None) -> str:
    """A schema copy's DDL as plain SQL (`pg_dump --schema-only` of the sandbox database, without
    owners, privileges or comments' noise): the "before" catalog an inverse's proposer reads. It
    comes from the sandbox, never the upstream, so it carries no credentials and takes no locks
    on the real tables."""
    url, env = split_password(sandbox_url)
    exclude = [f"--exclude-schema={exclude_schema}"] if exclude_schema else []
    code, out, err = await _run([str(bin_dir / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
                                 *exclude, "--dbname", url], env=env)
    if code != 0:
        raise SchemaError("pg_dump could not read the schema copy: " + err.decode(errors="replace").strip())
    return out.decode()


def ddl_for(ddl: str, names: set[str], *, limit: int = 20_000) -> str:
    """The sections of a plain `pg_dump` that mention any of `names` (bare object names), in dump
    order, cut at `limit` characters. Sections are what pg_dump heads with `-- Name: ...`."""
    sections = re.split(r"\n(?=--\n-- Name: )", ddl)
    # dbproxy's own objects (capture triggers, its schema) are not the user's to invert.
    wanted = [s for s in sections[1:] if "dbproxy" not in s.split("\n", 3)[2]
              and any(re.search(rf"\b{re.escape(n)}\b", s) for n in names)]
    text = "\n".join(x.strip("\n") for x in wanted)
    return text if len(text) <= limit else text[:limit] + "\n-- (cut)"
