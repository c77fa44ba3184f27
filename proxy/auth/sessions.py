"""Session ids bound to principals, statelessly: any replica can check any session.

The client never sees the upstream's `Mcp-Session-Id` as is: it gets `<id>.<tag>`, where the tag is
an HMAC of the id, the server and the principal's identity under a key every replica shares. A
session id presented by another principal (or for another server) fails the check and is treated
as unknown (404: the client starts a new session); the upstream never sees it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")  # what MCP allows in a session id


class SessionBinder:
    def __init__(self, key: bytes) -> None:
        self._key = key

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

