"""The authenticated client as policies see it (`input.principal`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    authenticated: bool = False
    via: tuple[str, ...] = ()  # "url_token", "jwt", "api_token"
    subject: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        """Who this is, for binding sessions: the strongest credential's subject."""
        if "jwt" in self.via:
            return f"jwt:{self.claims.get('iss', '')}:{self.subject or ''}"
        if "api_token" in self.via:
            return f"api_token:{self.subject or ''}"
        return "url_token" if "url_token" in self.via else "anonymous"

    def to_input(self) -> dict[str, Any]:
        return {"authenticated": self.authenticated, "via": list(self.via), "subject": self.subject,
                "claims": self.claims, "scopes": list(self.scopes)}


ANONYMOUS = Principal()
