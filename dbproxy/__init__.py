"""dbproxy: a transparent PostgreSQL proxy that makes what an AI agent writes reviewable and
reversible.

One folder per concern, in the order of one agent transaction's data flow. A module may import
modules of its own folder (without cycles) and of folders *above* it in this list, never below;
`tests/test_layout.py` enforces it:

    protocol/   sans-IO wire codec
    config/     settings and logging
    net/        asyncio byte pipes (one side of a session)
    auth/       agent identities and SCRAM
    backend/    upstream connections, the embedded cluster, the agents' own upstream roles
    journal/    the durable record of agent transactions
    policy/     rules, grants and approvals: what an agent may do, per object and operation class
    review/     the reviewer's interface: service, models, admin API, CLI client, row diff
    undo/       commit-with-undo, undo/redo, capture install, sandbox verification glue
    hold/       hold mode: the sans-IO planner, held connections, sessions, the review queue
    frontend/   the listener, client sessions, start-up and login
    cli.py, bench_cli.py   the `dbproxy` command (top)

Outside the package: `inverse` (pure SQL knowledge) and `sandbox` (verification) are libraries
dbproxy uses; neither imports dbproxy.
"""

__version__ = "0.1.0"
