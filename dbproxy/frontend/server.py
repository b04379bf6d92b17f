"""The listening proxy: accepts client connections, runs a `Session` for each, routes cancels,
and shuts down gracefully.

`ProxyServer` owns everything that is shared between sessions: settings, the upstream target
(the proxy's own role and its credentials), the agents' upstream roles, the agent registry, the
TLS context, the table of live sessions used to route CancelRequests, and the session limit.
`serve()` is the `dbproxy serve` entry point: it starts the embedded PostgreSQL when no upstream
is given, prints the agent URL and runs until SIGTERM/SIGINT.

Before it listens, the server sets up each agent's own upstream login role and checks the line
between agents and the proxy's state (`dbproxy.backend.agent_roles`): it refuses to start while
the agents' roles could read or change the journal, the capture log or the undo records, or reach
each other's sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hmac
import logging
import secrets
import signal
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import asyncpg

from dbproxy.auth.agents import AgentRegistry, add_to_store, load_store
from dbproxy.auth.reviewers import Reviewers
from dbproxy.auth.scram import certificate_binding
from dbproxy.backend import agent_roles
from dbproxy.backend.agent_roles import RoleError
from dbproxy.backend.embedded import EmbeddedPostgres
from dbproxy.backend.upstream import UpstreamError, UpstreamTarget
from dbproxy.config import log
from dbproxy.config.datadir import DataDirBusy, DataDirLock
from dbproxy.config.settings import Settings, SettingsError
from dbproxy.frontend.handshake import HandshakeConfig
from dbproxy.frontend.session import Session
from dbproxy.hold.lockwatch import LockWatch
from dbproxy.hold.pending import PendingRegistry
from dbproxy.journal.store import Journal, JournalError
from dbproxy.net.endpoint import Endpoint
from dbproxy.policy.rules import contradictions, overlaps
from dbproxy.policy.service import Policy, PolicyError, age
from dbproxy.policy.store import PolicyStore
from dbproxy.protocol.errors import SQLState
from dbproxy.protocol.startup import CancelRequest
from dbproxy.review.api import AdminServer, load_or_create_token
from dbproxy.review.events import LIVE_KINDS, EventHub, Kind, ReviewEvent
from dbproxy.review.metrics import ProxyMetrics
from dbproxy.review.notify import Notifier
from dbproxy.review.policy_api import ReloadReport
from dbproxy.review.summaries import Summaries
from dbproxy.undo.install import install
from dbproxy.undo.verification import Verification, llm_client
from sandbox.pgcluster import ClusterError
from sandbox.sampler import SampleOptions

#: Settings a reload applies; any other that changed takes effect only after a restart.
RELOADABLE = ("agents", "rules", "approval_timeout", "held_lock_timeout", "hold_timeout", "mode")


class ProxyServer:
    def __init__(self, settings: Settings, target: UpstreamTarget, registry: AgentRegistry, *,
                 reloader: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self.reloader = reloader  # reads the settings again (config file, environment, command line)
        self._reload_lock = asyncio.Lock()
        self.pending: PendingRegistry | None = None
        self.policy: Policy | None = None  # rules, grants and paused requests (needs the journal)
        self.journal: Journal | None = None
        self.admin: AdminServer | None = None
        self.admin_address: tuple[str, int] | None = None
        self.metrics = ProxyMetrics(self)
        self.notifier: Notifier | None = None
        self.target = target
        self.agent_role = settings.agent_role
        self.logins: dict[str, str] = {}  # agent name -> its upstream login role
        self._role_key = b""
        self.registry = registry
        self.sessions: set[Session] = set()
        self._by_pid: dict[int, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._targets: dict[str, UpstreamTarget] = {target.database: target}
        tls_context, cert_binding = _tls(settings)
        self.handshake_config = HandshakeConfig(
            registry=registry,
            default_database=target.database,
            auth_method=settings.agent_auth,
            tls_context=tls_context,
            tls_cert_binding=cert_binding,
            require_tls=settings.require_tls,
            max_message_bytes=min(settings.max_message_bytes, 1 << 20),
            on_cancel=self._on_cancel,
        )

    # -- listening ------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        try:
            await self._set_up_agent_roles()
            await self._start_review()
            await self._check_boundary()
        except BaseException:
            await self.shutdown(0)
            raise
        host, port = self.settings.listen_address
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_endpoint, host, port, reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        log.event("proxy.listening", address=f"{sock[0]}:{sock[1]}", upstream=self.target.display,
                  tls=self.handshake_config.tls_context is not None)
        return sock[0], sock[1]

    # -- the agents' upstream roles --------------------------------------------------------------

    async def _connect_own(self, dsn: str) -> asyncpg.Connection:
        """A connection as the proxy's own role. At start the proxy must reach the upstream (to set
        up the agents' roles and check what they can reach), so failing here stops `serve`."""
        try:
            return await asyncpg.connect(dsn, timeout=self.settings.connect_timeout)
        except TimeoutError:
            why = f"no answer within {self.settings.connect_timeout:g} s"
        except (OSError, asyncpg.PostgresError) as e:
            why = str(e) or type(e).__name__
        raise RoleError(f"cannot connect to the upstream as {self.target.user} at {self.target.display}: {why}")

    async def _set_up_agent_roles(self) -> None:
        """Create or repair each agent's login role and the agents' common role."""
        self._role_key = agent_roles.load_key(self.settings.data_dir)
        self.logins = {a.name: agent_roles.login_role(a.name, a.upstream_role) for a in self.registry.agents.values()}
        con = await self._connect_own(self.target.url())
        try:
            for line in await agent_roles.provision(con, group=self.agent_role, logins=self.logins.values(),
                                                    key=self._role_key):
                log.event("upstream.roles", line=line)
        finally:
            await con.close()

    async def _check_boundary(self) -> None:
        """Refuse to start while the agents' roles could reach the proxy's state: in the upstream
        database (capture log, undo records, the journal when it lives there) and in the state
        database."""
        roles = [self.agent_role, *self.logins.values()]
        dsns = [self.target.url()]
        if self.settings.state_database is not None:
            dsns.append(self.settings.state_database.get_secret_value())
        problems: list[str] = []
        for dsn in dsns:
            con = await self._connect_own(dsn)
            try:
                await agent_roles.lock_down(con, roles)
                problems += [p for p in await agent_roles.boundary_problems(con, roles, proxy_role=self.target.user)
                             if p not in problems]
            finally:
                await con.close()
        if problems:
            raise RoleError("the agents' upstream roles could reach the proxy's own state or each other: "
                            + "; ".join(problems)
                            + ". Fix the privileges (see README, 'The upstream roles'), then start again.")

    def agent_target(self, agent: str, database: str) -> UpstreamTarget:
        """Where an agent's sessions go: the upstream, as the agent's own login role."""
        role = self.logins.get(agent) or agent_roles.login_role(agent)
        return dataclasses.replace(self.target_for(database), user=role,
                                   password=agent_roles.password_for(self._role_key, role))

    async def repair_agent_login(self, agent: str) -> None:
        """An agent's login role was refused upstream (someone changed its password): set it again."""
        role = self.logins.get(agent) or agent_roles.login_role(agent)
        con = await self._connect_own(self.target.url())
        try:
            await agent_roles.repair(con, role, self._role_key)
        finally:
            await con.close()
        log.event("upstream.login_repaired", agent=agent, role=role, level=logging.WARNING)

    # -- review -------------------------------------------------------------------------------

    async def _start_review(self) -> None:
        """The journal, the review queue (recovering what a previous run left) and the admin API."""
        settings = self.settings
        state = settings.state_database.get_secret_value() if settings.state_database else self.target.url()
        instance = secrets.token_hex(8)
        modes = {settings.mode} | {a.mode or settings.mode for a in self.registry.agents.values()}
        try:
            self.journal = await Journal.open(state, instance=instance)
        except JournalError as e:
            if modes != {"passthrough"}:
                raise  # holding without a journal would lose track of what is held
            log.event("journal.unavailable", reason=str(e), level=logging.WARNING)
            return
        self.pending = PendingRegistry(self.journal, target_for=self.target_for,
                                       dsn_for=lambda db: self.target_for(db).url(),
                                       hold_timeout=settings.hold_timeout, agent_role=self.agent_role,
                                       database=self.target.database)
        self.policy = Policy(settings, PolicyStore(self.journal), capture_probe=self.pending.capture_state,
                             default_database=self.target.database, registry=self.registry)
        for note in overlaps([*settings.agents, ""], settings):
            log.event("policy.overlap", note=note, level=logging.WARNING)
        await self.policy.start()
        self.pending.policy = self.policy
        self.pending.lock_watch = LockWatch(self.pending.live, lambda: self.target.url(), settings.held_lock_timeout)
        bridge_policy_events(self.policy, self.pending.events, self.mode_of)

        self.pending.verification = Verification(
            backend=settings.sandbox, data_dir=settings.sandbox_dir or settings.data_dir / "sandbox",
            server_url=settings.sandbox_server.get_secret_value() if settings.sandbox_server else None,
            dsn_for=self.pending.dsn_for, timeout=settings.sandbox_timeout, cache=settings.verify_cache,
            options=SampleOptions(random_rows=settings.sandbox_sample_rows, neighbours=settings.sandbox_neighbours,
                                  mask=frozenset(settings.sandbox_mask)),
            llm=llm_client(settings.llm), llm_attempts=settings.llm.max_attempts, image=settings.sandbox_image)
        rules = bool(settings.rules) or any(a.rules for a in settings.agents.values()) or self.policy.any_permanent()
        if "undo" in modes or rules:  # rules allow commits with verified inverses in hold mode too
            self.pending.verification.warm(self.target.database)
        if settings.llm.summaries:
            summary_client = llm_client(settings.llm)
            if summary_client is not None:  # no key: no model, and `show` asks for nothing
                self.pending.summaries = Summaries(summary_client)

        async def xact_status(xid: int) -> str | None:
            assert self.pending is not None
            return await self.pending.xact_status(self.target.database, xid)

        marker = settings.data_dir / "instance"
        with contextlib.suppress(FileNotFoundError):
            previous = marker.read_text().strip()
            if previous and previous != instance:
                await self.journal.recover_instance(previous, xact_status)
        await self.journal.recover(xact_status)
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        marker.write_text(instance + "\n")
        self.pending.start()
        token = load_or_create_token(settings.data_dir,
                                     settings.admin_token.get_secret_value() if settings.admin_token else None)
        ahost, aport = settings.admin_address
        self.pending.events.listen(self.metrics.observe)
        self.admin = AdminServer(self.pending, token, host=ahost, port=aport, events=self.pending.events,
                                 metrics=self.metrics, reviewers=Reviewers(settings.data_dir, token),
                                 policy=self.policy, reload=self.reload if self.reloader is not None else None)
        self.admin_address = await self.admin.start()
        self.notifier = Notifier(settings.notify, settings.notify.console_url or console_url(self.admin_address),
                                 metrics=self.metrics)
        if self.notifier.enabled:
            self.pending.events.listen(self.notifier)
            self.notifier.start()

    # -- what the metrics read at each scrape (`dbproxy.review.metrics.LiveState`) ----------

    def sessions_by_agent(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for s in list(self.sessions):
            if s.login is not None:
                key = (s.login.agent.name, s.mode)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def pending_ages(self) -> list[tuple[str, str, float]]:
        if self.pending is None:
            return []
        now = time.monotonic()
        return [(h.agent, h.mode, now - h.held_monotonic) for h in list(self.pending.live.values())]

    def journal_backlog(self) -> tuple[int, float]:
        return self.journal.backlog() if self.journal is not None else (0, 0.0)

    def requests_waiting(self) -> list[tuple[str, float]]:
        if self.policy is None:
            return []
        return [(r.agent, age(r.created_at)) for r in self.policy.waiting_requests()]

    def mode_of(self, agent: str) -> str:
        known = self.registry.get(agent)
        return (known.mode if known is not None else None) or self.settings.mode

    def _new_endpoint(self) -> Endpoint:
        ep = Endpoint("client")
        ep.on_made = self._spawn
        return ep

    def _spawn(self, ep: Endpoint) -> None:
        assert ep.transport is not None
        peer = ep.transport.get_extra_info("peername")
        session = Session(self, ep, f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer))
        task = asyncio.get_running_loop().create_task(self._run(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, session: Session) -> None:
        try:
            await session.run()
        except Exception:
            log.event("session.crashed", session=session.id, level=logging.ERROR, exc_info=True)
            session.client.abort()
            if session.upstream is not None:
                session.upstream.abort()
            self.unregister(session)

    # -- sessions and cancels -------------------------------------------------------------

    def target_for(self, database: str) -> UpstreamTarget:
        t = self._targets.get(database)
        if t is None:
            t = self._targets[database] = dataclasses.replace(self.target, database=database)
        return t

    def admit(self) -> bool:
        return len(self.sessions) < self.settings.max_sessions

    def register(self, session: Session) -> None:
        self.sessions.add(session)
        self._by_pid[session.backend_pid] = session

    def unregister(self, session: Session) -> None:
        self.sessions.discard(session)
        if self._by_pid.get(session.backend_pid) is session:
            del self._by_pid[session.backend_pid]

    async def _on_cancel(self, req: CancelRequest) -> None:
        session = self._by_pid.get(req.pid)
        if session is None or not hmac.compare_digest(req.secret, session.cancel_secret):
            log.event("cancel.ignored", pid=req.pid, level=logging.DEBUG)
            return
        try:
            await session.cancel_upstream()
            log.event("cancel.sent", session=session.id, pid=req.pid)
        except (UpstreamError, OSError) as e:
            log.event("cancel.failed", session=session.id, reason=str(e), level=logging.WARNING)

    # -- reloading the settings -------------------------------------------------------------

    async def reload(self) -> ReloadReport:
        """Read the settings again (SIGHUP, `dbproxy reload`): agents (with their upstream roles),
        rules and timeouts change; sessions and held transactions carry on. Nothing changes when
        the new settings are invalid (PolicyError 422 says why)."""
        if self.reloader is None:
            raise PolicyError(409, "this proxy was not started with settings it can read again")
        async with self._reload_lock:
            try:
                new = self.reloader()
                registry = AgentRegistry.build(new.agents, new.data_dir)
            except (SettingsError, ValueError, OSError) as e:
                raise PolicyError(422, f"the settings were not reloaded: {e}") from None
            problems = contradictions([*new.agents, ""], new)
            if problems:
                raise PolicyError(422, f"the settings were not reloaded: {problems[0]}")
            logins = {a.name: agent_roles.login_role(a.name, a.upstream_role) for a in registry.agents.values()}
            if set(logins.values()) - set(self.logins.values()):
                try:
                    con = await self._connect_own(self.target.url())
                    try:
                        await agent_roles.provision(con, group=self.agent_role, logins=logins.values(),
                                                    key=self._role_key)
                        await agent_roles.lock_down(con, [self.agent_role, *logins.values()])
                    finally:
                        await con.close()
                except (RoleError, asyncpg.PostgresError, OSError) as e:
                    raise PolicyError(422, f"the settings were not reloaded: new agents' upstream roles could "
                                      f"not be set up: {e}") from None
            old = self.settings
            if self.policy is not None:
                try:
                    self.policy.configure(new)
                except ValueError as e:
                    raise PolicyError(422, f"the settings were not reloaded: {e}") from None
            before = self.registry.agents
            self.registry.agents = registry.agents  # the handshake reads this same registry
            self.logins = logins
            self.settings = old.model_copy(update={k: getattr(new, k) for k in RELOADABLE})
            if self.policy is not None:
                self.policy.settings = self.settings
            if self.pending is not None:
                self.pending.hold_timeout = self.settings.hold_timeout
                if self.pending.lock_watch is not None:
                    self.pending.lock_watch.timeout = self.settings.held_lock_timeout
            changed = sorted(n for n in set(before) & set(registry.agents)
                             if old.agents.get(n) != new.agents.get(n))
            report = ReloadReport(
                agents_added=sorted(set(registry.agents) - set(before)),
                agents_removed=sorted(set(before) - set(registry.agents)), agents_changed=changed,
                rules=len(new.rules) + sum(len(a.rules) for a in new.agents.values()),
                restart_needed=sorted(k for k in type(new).model_fields
                                      if k not in RELOADABLE and getattr(new, k) != getattr(old, k)))
            log.event("proxy.reloaded", **report.model_dump())
            return report

    def reload_soon(self) -> None:
        """SIGHUP: reload, saying in the log what changed or why nothing did."""
        async def run() -> None:
            try:
                await self.reload()
            except PolicyError as e:
                log.event("proxy.reload_failed", reason=e.message, level=logging.ERROR)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- shutdown -------------------------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; let sessions finish for `grace` seconds; then end the rest."""
        grace = self.settings.shutdown_grace if grace is None else grace
        if self._server is not None:
            self._server.close()
        log.event("proxy.stopping", sessions=len(self.sessions), grace=grace)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            if pending:
                for s in list(self.sessions):
                    s.terminate(SQLState.ADMIN_SHUTDOWN, "terminating connection due to administrator command")
                await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)
        if self.admin is not None:
            await self.admin.stop()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.pending is not None:
            await self.pending.stop()
            if self.pending.verification is not None:
                await self.pending.verification.close()
            if self.pending.summaries is not None:
                await self.pending.summaries.close()
        if self.journal is not None:
            await self.journal.close()
        log.event("proxy.stopped")


def _addr(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "-"


def console_url(address: tuple[str, int] | None) -> str:
    """The console's URL on the admin address (a server bound to every interface is named by the loopback)."""
    host, port = address or ("127.0.0.1", 6433)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/console"


def _tls(settings: Settings) -> tuple[ssl.SSLContext | None, bytes | None]:
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.require_tls:
            raise ValueError("require_tls needs tls_cert and tls_key")
        return None, None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both tls_cert and tls_key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx, certificate_binding(Path(settings.tls_cert).read_text())


def build_registry(settings: Settings, *, announce: bool = True, database: str = "postgres") -> AgentRegistry:
    """Agents from settings and the store; creates a first agent when there is none at all. Its
    password is printed once, or written to `password_file` (mode 600) when that is set."""
    if not settings.agents and not load_store(settings.data_dir):
        password = add_to_store(settings.data_dir, "agent", password_file=settings.password_file)
        if announce:
            host, port = settings.listen_address
            if settings.password_file is not None:
                print(f"Created agent 'agent'. Its password is in {settings.password_file} (mode 600; the proxy "
                      f"keeps just a SCRAM verifier):\n  postgresql://agent:PASSWORD@{host}:{port}/{database}",
                      file=sys.stdout, flush=True)
            else:
                print(
                    "Created agent 'agent'. Its password is shown only this once (the proxy keeps "
                    f"just a SCRAM verifier):\n  {password}\n"
                    f"  postgresql://agent:{password}@{host}:{port}/{database}",
                    file=sys.stdout, flush=True,
                )
    return AgentRegistry.build(settings.agents, settings.data_dir)


def bridge_policy_events(policy: Policy, hub: EventHub, mode_of: Callable[[str], str]) -> None:
    """What the policy does (a statement waits for approval, a request is decided, a grant is
    given or revoked) becomes review events: the console follows them live, the webhook tells
    people a statement waits, the metrics count them. Request events also say how many requests
    wait now (`waiting`, for the console's navigation)."""

    def relay(kind: str, fields: dict[str, object]) -> None:
        record = fields.get("request") if kind.startswith("request") else fields.get("grant")
        if kind not in LIVE_KINDS or not isinstance(record, dict):
            return
        agent = str(record.get("agent") or "")
        extra = {"waiting": len(policy.waiting_requests())} if kind.startswith("request") else {}
        hub.publish(ReviewEvent(cast(Kind, kind), None, agent, str(record.get("database") or ""), mode_of(agent),
                                fields={**fields, **extra}))

    policy.listeners.append(relay)


async def _install_embedded(embedded: EmbeddedPostgres) -> None:
    """Undo mode on the embedded default: `dbproxy install` as the cluster's superuser."""
    try:
        con = await asyncpg.connect(embedded.url())
        try:
            report = await install(con)
        finally:
            await con.close()
    except asyncpg.PostgresError as e:
        raise ClusterError(f"could not install undo capture in the embedded database: {e}") from e
    for line in report.lines():
        log.event("install", line=line.strip())


async def serve(settings: Settings, reloader: Callable[[], Settings] | None = None) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code.

    First of all it takes the data directory's lock (`dbproxy.config.datadir`), held until the
    process ends: a second proxy on the same data directory stops here, having touched nothing."""
    lock = DataDirLock(settings.data_dir, "dbproxy serve")
    try:
        lock.acquire()
    except DataDirBusy as e:
        print(f"dbproxy: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"dbproxy: cannot use the data directory {settings.data_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        return await _serve(settings, reloader)
    finally:
        lock.release()


async def _serve(settings: Settings, reloader: Callable[[], Settings] | None) -> int:
    # First: SIGTERM/SIGINT during the start (a supervisor that gives up waiting, a test that saw
    # the log line it wanted) must still end in a clean stop, never in the default hard exit.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    embedded: EmbeddedPostgres | None = None
    try:
        if settings.upstream is None:
            embedded = EmbeddedPostgres(settings.data_dir, settings.agent_role)
            log.event("embedded.starting", data_dir=str(embedded.cluster.data_dir))
            await asyncio.to_thread(embedded.start)
            target = UpstreamTarget.parse(embedded.url())
        else:
            target = UpstreamTarget.parse(settings.upstream.get_secret_value())
        registry = build_registry(settings, database=target.database)
        if embedded is not None and "undo" in {settings.mode} | {a.mode or settings.mode
                                                                for a in registry.agents.values()}:
            await _install_embedded(embedded)
        proxy = ProxyServer(settings, target, registry, reloader=reloader)
        host, port = await proxy.start()
    except (OSError, ValueError, ClusterError, JournalError, RoleError) as e:  # ssl.SSLError is an OSError
        what = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"dbproxy: cannot start on {settings.listen}: {what}", file=sys.stderr)
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        return 2
    # What start-up loaded lives as long as the process: out of the collector's full passes, whose
    # pauses (tens of milliseconds over every module's objects) would show in agents' latency tails.
    gc.freeze()
    names = ", ".join(sorted(registry.agents))
    print(f"dbproxy is listening on {host}:{port} for agents: {names}\n"
          f"  agent URL: postgresql://{next(iter(sorted(registry.agents)))}@{host}:{port}/{target.database}\n"
          f"  upstream: {'embedded PostgreSQL in ' + str(settings.data_dir) if embedded else target.display}\n"
          f"  default mode: {settings.mode}; review API: http://{_addr(proxy.admin_address)} "
          f"(token in {settings.data_dir / 'admin-token'} unless configured)\n"
          f"  review console: {console_url(proxy.admin_address)}/ (sign in with that token)",
          flush=True)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, proxy.reload_soon)
    await stop.wait()
    await proxy.shutdown()
    if embedded is not None:
        await asyncio.to_thread(embedded.stop)
    return 0
