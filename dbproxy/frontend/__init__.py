"""Where agents come in.

- `server`: the listener; owns what sessions share (settings, upstream targets, agents, TLS, the
  review queue, the admin API) and routes cancels; `serve()` is `dbproxy serve`.
- `session`: one client session: handshake, one upstream connection, then the pass-through relay
  or a hold session. Reaches the server through `session.ProxyHost`.
- `handshake`: TLS negotiation, protocol version and agent login.

May import: every folder above it in the list in `dbproxy/__init__.py`; `inverse`, `sandbox`.
"""
