"""dbproxy: a transparent PostgreSQL proxy that makes what an AI agent writes reviewable and
reversible. See DESIGN.md for the map; `dbproxy.cli` is the command line, `dbproxy.server` the
listener, `dbproxy.session` one client's relay, `dbproxy.protocol` the sans-IO wire codec."""

__version__ = "0.1.0"
