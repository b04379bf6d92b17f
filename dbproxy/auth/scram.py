"""Server side of SCRAM-SHA-256(-PLUS) as PostgreSQL speaks it (RFC 5802/7677), sans-IO.

Why not scramp's server: PostgreSQL clients (libpq, asyncpg, JDBC...) send an empty SCRAM user
name (`n=,r=...`) because the role comes from the start-up packet, and scramp >= 1.4.16 rejects
empty attribute values. scramp still makes the verifiers (`agents.Verifier`) and is the client
the proxy uses upstream; this module only checks a proof against a verifier, using hashlib/hmac.

Channel binding (`tls-server-end-point`): the binding data is a hash of the proxy's certificate,
SHA-256 unless the certificate is signed with SHA-384/512 (RFC 5929 section 4.1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import ssl

from asn1crypto import x509

from dbproxy.auth.agents import Verifier

CB_NAME = "tls-server-end-point"


class ScramFailed(Exception):
    """The exchange failed: malformed message, wrong binding, or wrong password."""


def certificate_binding(cert_pem: str) -> bytes:
    """The tls-server-end-point channel binding data for a PEM certificate."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem)
    algo = x509.Certificate.load(der).hash_algo
    name = algo if algo in ("sha384", "sha512") else "sha256"
    return hashlib.new(name, der).digest()


def _attrs(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramFailed("malformed SCRAM message")
        out.append((part[0], part[2:]))
    return out


class ScramServerExchange:
    """One authentication: `first(client_first) -> server_first`, `final(client_final) ->
    server_final`. `binding` is the channel binding data when the client chose -PLUS, and
    `offered_plus` whether -PLUS was offered at all (to catch downgrade attempts)."""

    def __init__(self, verifier: Verifier, *, binding: bytes | None, offered_plus: bool) -> None:
        self.verifier = verifier
        self.binding = binding
        self.offered_plus = offered_plus
        self._gs2 = ""
        self._bare = ""
        self._server_first = ""
        self._nonce = ""

    def first(self, client_first: str) -> str:
        try:
            flag, authzid, bare = client_first.split(",", 2)
        except ValueError:
            raise ScramFailed("malformed SCRAM client-first message") from None
        if authzid:
            raise ScramFailed("SCRAM authorization identities are not supported")
        if self.binding is not None:
            if flag != f"p={CB_NAME}":
                raise ScramFailed("SCRAM-SHA-256-PLUS requires tls-server-end-point channel binding")
        elif flag == "y" and self.offered_plus:
            raise ScramFailed("client claims the server does not support channel binding, but it does")
        elif flag not in ("n", "y"):
            raise ScramFailed("channel binding requested without SCRAM-SHA-256-PLUS")
        attrs = _attrs(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise ScramFailed("malformed SCRAM client-first message")
        client_nonce = attrs[1][1]
        if not all(0x21 <= ord(c) <= 0x7E for c in client_nonce):
            raise ScramFailed("invalid SCRAM nonce")
        self._gs2 = f"{flag},,"
        self._bare = bare
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        salt = base64.b64encode(self.verifier.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self.verifier.iterations}"
        return self._server_first

    def final(self, client_final: str) -> str:
        without_proof, sep, proof_b64 = client_final.rpartition(",p=")
        if not sep:
            raise ScramFailed("SCRAM client-final message has no proof")
        attrs = dict(_attrs(without_proof))
        expected_c = base64.b64encode(self._gs2.encode() + (self.binding or b"")).decode()
        if not hmac.compare_digest(attrs.get("c", ""), expected_c):
            raise ScramFailed("SCRAM channel binding does not match")
        if attrs.get("r") != self._nonce:
            raise ScramFailed("SCRAM nonce does not match")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise ScramFailed("malformed SCRAM proof") from None
        auth_message = f"{self._bare},{self._server_first},{without_proof}".encode()
        signature = hmac.new(self.verifier.stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(signature):
            raise ScramFailed("malformed SCRAM proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key):
            raise ScramFailed("wrong password")
        server_signature = hmac.new(self.verifier.server_key, auth_message, hashlib.sha256).digest()
        return "v=" + base64.b64encode(server_signature).decode()
