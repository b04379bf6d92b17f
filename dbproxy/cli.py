"""The `dbproxy` command line.

    dbproxy serve [--upstream URL] [--listen HOST:PORT] [--admin HOST:PORT] [--config PATH]
                  [--data-dir PATH] [--agent NAME=PASSWORD ...] [--tls-cert PEM --tls-key PEM]
                  [--password-file PATH] [--log-format auto|json|text]
    dbproxy agent add NAME [--password PW | --password-file PATH] | agent list | agent remove NAME
    dbproxy reviewer add NAME | reviewer list | reviewer remove NAME
    dbproxy pending | show ID | commit ID | rollback ID | log [--outcome X] [--agent A] [--limit N]
                  [--admin HOST:PORT] [--admin-token TOKEN] [--reason TEXT] [--json]
                  [--state-database URL]   (log, show: read the journal directly, proxy stopped)
    dbproxy grant AGENT OPS ON OBJECTS --scope session|permanent | grants | revoke ID
                  | requests | approve REQUEST [--scope once|session|permanent] | reject REQUEST
                  --reason TEXT | reload | commit ID --grant session|permanent
    dbproxy psql [--data-dir PATH] [-- PSQL ARGS]   psql on the embedded PostgreSQL, as its superuser
    dbproxy bench inverse [--strategy rules|llm|hybrid] [--cases PATTERN] [--out DIR] [--upstream URL]
                          [--sample N] [--resume] [--llm-base-url URL --llm-model NAME ...]
    dbproxy bench local-model [--gguf PATH] [inverse options | --serve | -- COMMAND]
    dbproxy bench proxy [proxy-overhead options]
    dbproxy sandbox build-image [--base IMAGE] [--suite SUITE] [--mirror URL] [--rebuild]
    dbproxy version

Every `serve` option also has a config-file key and a `DBPROXY_...` environment variable
(see `dbproxy.config.settings`); the command line wins over both. The review commands are clients of
the running proxy's admin API (`dbproxy.review.cli`, `dbproxy.review.api`).

A mistake on the command line (an unknown option, a malformed setting, a file that cannot be
written) ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

from dbproxy import __version__, bench_cli
from dbproxy.auth import reviewers
from dbproxy.auth.agents import add_to_store, load_store, remove_from_store
from dbproxy.backend.embedded import NoEmbedded, running_for_people
from dbproxy.config import log
from dbproxy.config.datadir import DataDirBusy
from dbproxy.config.settings import Settings, SettingsError, load_settings
from dbproxy.review import cli as review_cli
from sandbox.pgcluster import ClusterError, bin_dir


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block): `dbproxy show: error: ...`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dbproxy", description="Transparent PostgreSQL proxy that makes agent writes reviewable and reversible."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help="TOML config file (env DBPROXY_CONFIG)")
        sp.add_argument("--data-dir", type=Path, dest="data_dir", help="state directory (env DBPROXY_DATA_DIR)")

    s = sub.add_parser("serve", help="run the proxy (embedded PostgreSQL when no --upstream)")
    common(s)
    s.add_argument("--upstream", help="postgresql://USER:PASS@HOST:PORT/DB (env DBPROXY_UPSTREAM)")
    s.add_argument("--listen", help="HOST:PORT for agents (default 127.0.0.1:6432)")
    s.add_argument("--admin", help="HOST:PORT for the review API (default 127.0.0.1:6433)")
    s.add_argument("--admin-token", dest="admin_token",
                   help="bearer token for the review API (default: generated into DATA_DIR/admin-token)")
    s.add_argument("--agent", action="append", metavar="NAME=PASSWORD", help="agent identity (repeatable)")
    s.add_argument("--agent-auth", dest="agent_auth", choices=["scram-sha-256", "password"])
    s.add_argument("--tls-cert", dest="tls_cert", type=Path, help="PEM certificate for client TLS")
    s.add_argument("--tls-key", dest="tls_key", type=Path, help="PEM private key for client TLS")
    s.add_argument("--require-tls", dest="require_tls", action="store_true", default=None,
                   help="refuse clients that do not use TLS")
    s.add_argument("--max-sessions", dest="max_sessions", type=int)
    s.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", dest="log_format", choices=["auto", "json", "text"],
                   help="auto (default): readable text when stderr is a terminal, JSON lines otherwise")
    s.add_argument("--password-file", dest="password_file", type=Path, metavar="PATH",
                   help="write the first agent's generated password to PATH (mode 600) instead of printing it")
    s.add_argument("--log-statements", dest="log_statements", action="store_true", default=None)
    s.add_argument("--mode", choices=["hold", "passthrough", "read-only", "undo"],
                   help="default agent mode (default hold: writes wait for a reviewer)")
    s.add_argument("--hold-timeout", dest="hold_timeout", type=float,
                   help="seconds before a pending transaction expires (default 3600)")

    a = sub.add_parser("agent", help="manage agent identities stored in the data directory")
    asub = a.add_subparsers(dest="agent_command", required=True)
    add = asub.add_parser("add", help="create an agent and print its password once")
    add.add_argument("name")
    add.add_argument("--password", help="use this password instead of a generated one")
    add.add_argument("--password-file", dest="password_file", type=Path, metavar="PATH",
                     help="write the generated password to PATH (mode 600) instead of printing it")
    lst = asub.add_parser("list", help="list stored agents")
    rm = asub.add_parser("remove", help="remove a stored agent")
    rm.add_argument("name")
    for sp in (add, lst, rm):
        common(sp)

    r = sub.add_parser("reviewer", help="manage reviewers: people with names and tokens of their own")
    rsub = r.add_subparsers(dest="reviewer_command", required=True)
    radd = rsub.add_parser("add", help="create a reviewer and print its token once (only its hash is kept)")
    radd.add_argument("name")
    rlst = rsub.add_parser("list", help="list reviewers")
    rrm = rsub.add_parser("remove", help="remove a reviewer (its token stops working at once)")
    rrm.add_argument("name")
    for sp in (radd, rlst, rrm):
        common(sp)

    for name, what in (("install", "prepare the upstream database for undo mode (capture triggers, event triggers)"),
                       ("uninstall", "remove everything `install` put into the upstream database")):
        ip = sub.add_parser(name, help=what, description=what)
        ip.add_argument("--upstream", help="postgresql:// URL of a role that owns the tables (env DBPROXY_UPSTREAM)")
        common(ip)

    review_cli.add_parsers(sub, common)
    bench_cli.add_parser(sub)

    ps = sub.add_parser("psql", help="open psql on the embedded PostgreSQL as its superuser (to inspect or repair)",
                        description="Open psql on the embedded PostgreSQL of the data directory, as its superuser, "
                        "over its Unix socket. While the proxy runs, on its running cluster; with the proxy "
                        "stopped, the cluster is started for the session and stopped after it (the data directory "
                        "is locked meanwhile). Arguments after -- go to psql.")
    common(ps)
    ps.add_argument("psql_args", nargs=argparse.REMAINDER, metavar="-- PSQL ARGS",
                    help="passed to psql, e.g. -- -c 'select 1'")

    sb = sub.add_parser("sandbox", help="the verification sandbox's container images")
    sbsub = sb.add_subparsers(dest="sandbox_command", required=True)
    what = ("build a PostgreSQL image for the testcontainers sandbox without any registry: the bundled "
            "PostgreSQL on a minimal Debian base made with debootstrap from this system's mirror")
    bi = sbsub.add_parser("build-image", help=what, description=what)
    bi.add_argument("--base", help="an existing Debian-based image to build on instead of making one")
    bi.add_argument("--suite", default="bookworm", help="Debian release of the base (default bookworm)")
    bi.add_argument("--mirror", help="Debian mirror URL (default: the one apt uses here)")
    bi.add_argument("--rebuild", action="store_true", help="build again even if the images are there")

    sub.add_parser("version", help="print the version")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # parses its own arguments (`bench proxy` passes them on)
        return bench_cli.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"dbproxy {__version__}")
        return 0
    if args.command in review_cli.COMMANDS:
        return review_cli.run(args)
    if args.command == "sandbox":
        return _build_image(args)
    cli: dict[str, Any] = {k: v for k, v in vars(args).items()
                           if k not in ("command", "config", "agent_command", "reviewer_command", "name",
                                        "password", "psql_args")}
    if args.command == "agent":
        cli.pop("password_file", None)  # `agent add --password-file` is for that agent, not a setting
    try:
        settings = load_settings(args.config, cli)
    except SettingsError as e:
        print(f"dbproxy: {e}", file=sys.stderr)
        return 2
    if args.command == "agent":
        try:
            return _agent(args, settings)
        except OSError as e:
            print(f"dbproxy: {e.filename or settings.data_dir}: {e.strerror or e}", file=sys.stderr)
            return 2
    if args.command == "reviewer":
        return _reviewer(args, settings)
    if args.command in ("install", "uninstall"):
        return asyncio.run(_install(args.command, settings))
    if args.command == "psql":
        return _psql(settings, args.psql_args)
    from dbproxy.policy.rules import contradictions

    problems = contradictions([*settings.agents, ""], settings)
    if problems:
        print(f"dbproxy: {problems[0]}", file=sys.stderr)
        return 2
    log.setup(settings.log_level, settings.log_format)
    from dbproxy.frontend.server import serve

    def reloader() -> Settings:
        return load_settings(args.config, cli)

    try:
        import uvloop

        return uvloop.run(serve(settings, reloader))
    except ImportError:
        return asyncio.run(serve(settings, reloader))


async def _install(command: str, settings: Settings) -> int:
    import asyncpg

    from dbproxy.undo.install import install, uninstall

    if settings.upstream is None:
        print("dbproxy: give --upstream (or DBPROXY_UPSTREAM); on the embedded default, "
              "`dbproxy serve --mode undo` installs capture itself", file=sys.stderr)
        return 2
    try:
        con = await asyncpg.connect(settings.upstream.get_secret_value(), timeout=30)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        what = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        print(f"dbproxy: cannot connect to the upstream: {what}", file=sys.stderr)
        return 2
    try:
        lines = (await install(con)).lines() if command == "install" else await uninstall(con)
    except asyncpg.PostgresError as e:
        print(f"dbproxy: {command} failed ({e.sqlstate}): {e}", file=sys.stderr)
        return 1
    finally:
        await con.close()
    print("\n".join(lines))
    return 0


def _build_image(args: argparse.Namespace) -> int:
    from sandbox.image import ImageError, build_all

    try:
        done = build_all(base=args.base, suite=args.suite, mirror=args.mirror, rebuild=args.rebuild)
    except ImageError as e:
        print(f"dbproxy: {e}", file=sys.stderr)
        return 2 if e.usage else 1
    for b in done:
        took = f" in {b.seconds:.0f} s" if b.action == "built" else ""
        print(f"{b.tag}: {b.action}{took}" + (f" ({b.detail})" if b.detail else ""))
    major = done[-1].tag.rsplit(":", 1)[1]
    print(f"The testcontainers sandbox (sandbox = \"testcontainers\" or \"auto\") uses {done[-1].tag} when "
          f"postgres:{major} cannot be pulled.")
    return 0


def _agent(args: argparse.Namespace, settings: Settings) -> int:
    if args.agent_command == "add":
        if args.password and args.password_file:
            print("dbproxy: give --password or --password-file, not both", file=sys.stderr)
            return 2
        password = add_to_store(settings.data_dir, args.name, args.password, password_file=args.password_file)
        print(f"agent {args.name!r} stored in {settings.data_dir}")
        if args.password_file:
            print(f"password written to {args.password_file} (mode 600)")
        elif not args.password:
            print(f"password (shown only this once): {password}")
        print("restart `dbproxy serve` for it to take effect")
    elif args.agent_command == "list":
        stored = load_store(settings.data_dir)
        for name in sorted(set(stored) | set(settings.agents)):
            where = "config" if name in settings.agents else "store"
            print(f"{name}\t({where})")
    elif args.agent_command == "remove":
        if not remove_from_store(settings.data_dir, args.name):
            print(f"dbproxy: no stored agent {args.name!r}", file=sys.stderr)
            return 1
        print(f"agent {args.name!r} removed")
    return 0


def _reviewer(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.reviewer_command == "add":
            token = reviewers.add(settings.data_dir, args.name)
            print(f"reviewer {args.name!r} added. Its token is shown only this once (the proxy keeps just its "
                  f"hash):\n  {token}\nGive it to {args.name}; they pass it as DBPROXY_ADMIN_TOKEN or --admin-token.")
        elif args.reviewer_command == "list":
            found = reviewers.load(settings.data_dir)
            print(f"{reviewers.ADMIN}\t(the admin token)")
            for name, r in sorted(found.items()):
                print(f"{name}\t(added {r.created_at})")
        elif args.reviewer_command == "remove":
            if not reviewers.remove(settings.data_dir, args.name):
                print(f"dbproxy: no reviewer {args.name!r}", file=sys.stderr)
                return 2
            print(f"reviewer {args.name!r} removed; its token no longer works")
    except reviewers.ReviewerError as e:
        print(f"dbproxy: {e}", file=sys.stderr)
        return 2
    return 0


def _psql(settings: Settings, psql_args: list[str]) -> int:
    """`dbproxy psql`: psql on the embedded cluster as its superuser, over its Unix socket. The
    password goes through the environment (PGPASSWORD), not the command line."""
    if settings.upstream is not None:
        print("dbproxy: the proxy runs on an upstream of yours (the upstream setting); use psql on it directly. "
              "`dbproxy psql` opens the embedded PostgreSQL", file=sys.stderr)
        return 2
    args = psql_args[1:] if psql_args[:1] == ["--"] else psql_args
    try:
        with running_for_people(settings.data_dir, "dbproxy psql", while_proxy_runs=True) as embedded:
            cluster = embedded.cluster
            env = {**os.environ, "PGPASSWORD": cluster.password, "PGHOST": str(cluster.socket_dir),
                   "PGPORT": str(cluster.port), "PGUSER": cluster.superuser, "PGDATABASE": "postgres"}
            env.pop("PGSERVICE", None)
            # psql handles Ctrl-C itself (it cancels the running query); we wait for it to end.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                return subprocess.run([str(bin_dir() / "psql"), *args], env=env, check=False).returncode
            finally:
                signal.signal(signal.SIGINT, previous)
    except (NoEmbedded, DataDirBusy, ClusterError) as e:
        print(f"dbproxy: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"dbproxy: {e.filename or settings.data_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
