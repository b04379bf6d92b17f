"""The asyncio side of a connection, shared by both ends of a session.

- `endpoint`: one side of a session's byte pipe, an asyncio Protocol that is awaited during
  start-up and relays bytes synchronously afterwards, with flow control between peers.

May import: `protocol`.
"""
