"""Session ids bound to principals, statelessly: any replica can check any session.

The client never sees the upstream's `Mcp-Session-Id` as is: it gets `<id>.<tag>`, where the tag is
an HMAC of the id, the server and the principal's identity under a key every replica shares. A
session id presented by another principal (or for another server) fails the check and is treated
as unknown (404: the client starts a new session); the upstream never sees it.

A legacy SSE session lives in the one worker holding its stream. With several workers or replicas
its id names that worker's internal address (its owner), under a tag of the same key, so whichever
worker a POST lands on can pass it on to the owner (proxy/transport/cluster.py), and a client can
neither forge an owner nor point one at another address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")  # what MCP allows in a session id


_LEGACY_ID = re.compile(r"[0-9a-f]{32}\.[A-Za-z0-9_-]{1,400}\.[A-Za-z0-9_-]{24}")


class SessionBinder:
    def __init__(self, key: bytes, owner: str | None = None) -> None:
        """`owner`: this worker's internal address (`host:port`), named by the legacy session ids it
        issues; None: one worker alone, whose ids name nobody."""
        self._key = key
        self.owner = owner
        self._legacy_key = hmac.new(key, b"mcp-policy-proxy legacy session owner", hashlib.sha256).digest()
        self._owner_field = base64.urlsafe_b64encode(owner.encode()).decode().rstrip("=") if owner else None

    def legacy_id(self) -> str:
        """A new legacy session id: 128 random bits, and with an owner `<random>.<owner>.<tag>`."""
        nonce = secrets.token_hex(16)
        if self._owner_field is None:
            return nonce
        body = f"{nonce}.{self._owner_field}"
        return f"{body}.{self._legacy_tag(body)}"

    def legacy_owner(self, presented: str) -> str | None:
        """The owner a legacy session id names, when this key issued it; None for any other id."""
        if not _LEGACY_ID.fullmatch(presented):
            return None
        body, _, tag = presented.rpartition(".")
        if not hmac.compare_digest(tag, self._legacy_tag(body)):
            return None
        field = body.partition(".")[2]
        try:
            return base64.urlsafe_b64decode(field + "=" * (-len(field) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            return None

    def _legacy_tag(self, body: str) -> str:
        mac = hmac.new(self._legacy_key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()

    def _tag(self, identity: str, server: str, session_id: str) -> str:
        mac = hmac.new(self._key, f"{identity}\0{server}\0{session_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()  # 144 bits, 24 characters, no padding

    def wrap(self, identity: str, server: str, session_id: str) -> str:
        return f"{session_id}.{self._tag(identity, server, session_id)}"

    def unwrap(self, identity: str, server: str, presented: str) -> str | None:
        """The upstream's session id inside `presented`, or None when it is not one this proxy
        issued to this principal for this server. Session ids are visible ASCII (MCP): anything
        else (header bytes decoded as latin-1, obs-text) is no session id at all."""
        if not _VISIBLE_ASCII.fullmatch(presented):
            return None
        session_id, dot, tag = presented.rpartition(".")
        if not dot or not hmac.compare_digest(tag, self._tag(identity, server, session_id)):
            return None
        return session_id

