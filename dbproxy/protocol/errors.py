"""Errors raised by the codec, and the SQLSTATE codes the proxy itself answers with.

A `ProtocolViolation` means the peer sent bytes that are not a valid PostgreSQL message; the
session answers it with SQLSTATE 08P01 and closes, the way PostgreSQL does.
"""

from __future__ import annotations


class ProtocolViolation(Exception):
    """The byte stream broke the protocol (bad length, unknown type, truncated body...)."""

    sqlstate = "08P01"


class SQLState:
    """SQLSTATE codes used by the proxy's own ErrorResponses (names follow PostgreSQL's)."""

    PROTOCOL_VIOLATION = "08P01"
    CONNECTION_FAILURE = "08006"
    SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION = "08001"
    INVALID_PASSWORD = "28P01"
    INVALID_AUTHORIZATION_SPECIFICATION = "28000"
    INVALID_CATALOG_NAME = "3D000"
    FEATURE_NOT_SUPPORTED = "0A000"
    ADMIN_SHUTDOWN = "57P01"
    CANNOT_CONNECT_NOW = "57P03"
    TOO_MANY_CONNECTIONS = "53300"
    INTERNAL_ERROR = "XX000"
