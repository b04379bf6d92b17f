"""Sans-IO codec for the PostgreSQL v3 wire protocol.

Bytes go in, typed messages come out, and back again; nothing in this package waits, reads a
socket or imports asyncio (the way h11 and psycopg's generators keep protocol logic apart from
I/O). The server and sessions in `dbproxy` own the sockets and call into this package.

- `framing`: splitting a byte stream into frames, with size limits and validation. Its
  `StreamScanner` is the hot path: it hands back uninteresting frames as untouched byte runs.
- `messages`: typed messages (frontend and backend) with `encode` and `decode`.
- `startup`: the untyped first packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).
- `errors`: the exception raised for malformed input, and SQLSTATE-carrying error fields.
"""
