"""Reading the journal with the proxy stopped: `dbproxy log` and `dbproxy show` straight from the
state database, read-only, when the review API is not there.

Where the journal is: `--state-database URL` (or the `state_database` setting), else the upstream
database (the journal's default home: the `upstream` setting), else the embedded PostgreSQL in the
data directory, started for the read (tied to this process) and stopped again after it.

The reader takes the data directory's lock while it runs (`dbproxy.config.datadir`), so no proxy
starts on it meanwhile; when a proxy holds it, the reader refuses: a running proxy's journal is
read through its review API, which also knows what is held right now. It reads in a read-only
transaction of a session with `default_transaction_read_only`, and writes nothing: a transaction
a stopped proxy left `pending` shows as such (its upstream rolled it back when the proxy's
connection closed; the next `dbproxy serve` journals that), with a note.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg

from dbproxy.backend.embedded import NoEmbedded, running_for_people
from dbproxy.config.datadir import DataDirBusy, DataDirLock
from dbproxy.config.settings import Settings
from dbproxy.journal.records import FINAL_OUTCOMES, TransactionRecord
from dbproxy.journal.store import asyncpg_dsn, display_of, fetch_transaction, fetch_transactions, schema_version
from dbproxy.review.models import TransactionDetail
from dbproxy.review.present import for_people

T = TypeVar("T")
CONNECT_TIMEOUT = 10.0
STOPPED_NOTE = ("read from the journal directly, not through a running proxy: row-level diffs exist only "
                "while a transaction is held, through its proxy")
UNFINISHED_NOTE = ("the journal says it is still {outcome}: if its proxy has stopped, the upstream rolled it back "
                   "when the proxy's connection closed, and the next `dbproxy serve` journals it as rolled back")


class OfflineError(Exception):
    """The journal cannot be read directly; the message says why and what to do."""


def read(settings: Settings, state_url: str | None, command: str,
         fn: Callable[[asyncpg.Connection, int], Awaitable[T]]) -> tuple[T, str]:
    """Run `fn(connection, journal schema version)` on the journal, read-only; returns its result and
    where the journal was read (host and port or the embedded cluster, never credentials)."""
    with _source(settings, state_url, command) as url:
        where = display_of(url)
        return asyncio.run(_read(url, where, fn)), where


@contextlib.contextmanager
def _source(settings: Settings, state_url: str | None, command: str) -> Iterator[str]:
    url = state_url or (settings.state_database.get_secret_value() if settings.state_database else None) \
        or (settings.upstream.get_secret_value() if settings.upstream else None)
    try:
        if url is not None:
            # Nothing can be using a data directory that does not exist: do not create one.
            lock = DataDirLock(settings.data_dir, command) if Path(settings.data_dir).is_dir() else None
            if lock is not None:
                lock.acquire()
            try:
                yield url
            finally:
                if lock is not None:
                    lock.release()
            return
        with running_for_people(settings.data_dir, command, while_proxy_runs=False) as embedded:
            yield embedded.url()
    except DataDirBusy as e:
        raise OfflineError(f"{e}: a running proxy's journal is read through its review API "
                           "(is --admin / DBPROXY_ADMIN its address?)") from None
    except NoEmbedded as e:
        raise OfflineError(f"{e}, and no --state-database or upstream is configured") from None
    except OSError as e:
        raise OfflineError(f"cannot use the data directory {settings.data_dir}: {e.strerror or e}") from None


async def _read(url: str, where: str, fn: Callable[[asyncpg.Connection, int], Awaitable[T]]) -> T:
    dsn, timeout = asyncpg_dsn(url)
    try:
        con = await asyncpg.connect(dsn, timeout=min(timeout, CONNECT_TIMEOUT), server_settings={
            "application_name": "dbproxy offline reader", "default_transaction_read_only": "on"})
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        what = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise OfflineError(f"cannot connect to the journal database at {where}: {what}") from None
    try:
        version = await schema_version(con)
        if version is None:
            raise OfflineError(f"there is no journal in the database at {where} (no proxy has used it yet)")
        return await fn(con, version)
    except asyncpg.PostgresError as e:
        raise OfflineError(f"reading the journal at {where} failed: {e}") from None
    finally:
        await con.close()


def log(settings: Settings, state_url: str | None, *, outcome: str | None, agent: str | None, limit: int,
        before_id: int | None) -> tuple[list[TransactionRecord], str]:
    async def fn(con: asyncpg.Connection, version: int) -> list[TransactionRecord]:
        return await fetch_transactions(con, outcome=outcome, agent=agent, limit=limit, before_id=before_id,
                                        version=version)

    return read(settings, state_url, "dbproxy log", fn)


def show(settings: Settings, state_url: str | None, tx_id: int) -> tuple[TransactionDetail | None, str]:
    """The transaction as `dbproxy show` prints it (None: no such id)."""
    async def fn(con: asyncpg.Connection, version: int) -> TransactionDetail | None:
        found = await fetch_transaction(con, tx_id, version=version)
        if found is None:
            return None
        record, statements = found
        note = STOPPED_NOTE
        if record.outcome not in FINAL_OUTCOMES:
            note += "; " + UNFINISHED_NOTE.format(outcome=record.outcome)
        return TransactionDetail(transaction=record, statements=for_people(statements), diff_note=note)

    return read(settings, state_url, "dbproxy show", fn)
