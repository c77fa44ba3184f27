"""The token file: the grant `upstream login` obtained, as `serve` uses and refreshes it.

JSON, written whole (a temporary file renamed over the old one) with mode 0600. With
`upstream.oauth.token_key` the JSON is sealed with Fernet (AES-128-CBC + HMAC-SHA256) under a key
derived from it (HKDF-SHA256), so a copy of the file alone gives nothing away. Every process using
the file (the login command, each worker of `serve`) changes it under an exclusive lock on
`<token_file>.lock`: an authorization server that rotates refresh tokens must see each one used once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT = "mcp-policy-proxy upstream grant"
VERSION = 1
LOCK_TIMEOUT_S = 15.0  # longer than one refresh takes (its requests time out after 10 s)


class GrantFileError(Exception):
    """The token file cannot be used: `reason` is no_grant (missing) or unreadable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class Grant:
    """What `serve` needs to use and refresh the grant without discovering anything again."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float | None  # Unix time; None: the authorization server gave no lifetime
    obtained_at: float  # Unix time the access token was issued (as seen here)
    scope: str  # granted, space-separated
    resource: str  # the RFC 8707 resource indicator, sent with every token request
    issuer: str
    token_endpoint: str
    client_id: str
    auth_method: str  # at the token endpoint: none, client_secret_basic or client_secret_post
    # A registered client's secret; a pre-registered one's stays in upstream.oauth.client_secret_file.
    client_secret: str | None = field(default=None, repr=False)
    registered: bool = False  # the client was registered by `upstream login` (RFC 7591)
    revocation_endpoint: str | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def _fernet(key: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"mcp-policy-proxy upstream.oauth.token_file v1").derive(key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def encode(grant: Grant, key: str | None) -> bytes:
    document = json.dumps({"format": FORMAT, "version": VERSION, "grant": asdict(grant)}).encode()
    if key is None:
        return document
    sealed = _fernet(key).encrypt(document).decode()
    return json.dumps({"format": FORMAT, "version": VERSION, "encrypted": sealed}).encode()


def decode(data: bytes, key: str | None, path: str) -> Grant:
    def bad(why: str) -> GrantFileError:
        return GrantFileError("unreadable", f"{path}: {why}")

    try:
        document = json.loads(data)
    except ValueError:
        raise bad("not a token file written by `upstream login`") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise bad("not a token file written by `upstream login`")
    if document.get("version") != VERSION:
        raise bad(f"written in format version {document.get('version')!r}; this proxy reads {VERSION}")
    if "encrypted" in document:
        if key is None:
            raise bad("is encrypted: set upstream.oauth.token_key (or token_key_file)")
        try:
            document = json.loads(_fernet(key).decrypt(str(document["encrypted"]).encode()))
        except (InvalidToken, ValueError):
            raise bad("cannot be decrypted with upstream.oauth.token_key (another key wrote it?)") from None
    elif key is not None:
        raise bad("is not encrypted but upstream.oauth.token_key is set: run `upstream login` again")
    raw = document.get("grant") if isinstance(document, dict) else None
    names = {f.name for f in fields(Grant)}
    if not isinstance(raw, dict) or not {"access_token", "token_endpoint", "client_id"} <= raw.keys():
        raise bad("holds no grant")
    try:
        return Grant(**{k: v for k, v in raw.items() if k in names})
    except TypeError:
        raise bad("holds an incomplete grant") from None


def stamp(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is replaced (another process refreshed it, a new login): or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def load(path: str, key: str | None) -> Grant:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise GrantFileError("no_grant", f"{path}: no grant yet") from None
    except OSError as exc:
        raise GrantFileError("unreadable", f"{path}: cannot read: {exc.strerror}") from None
    return decode(data, key, path)


def save(path: str, grant: Grant, key: str | None) -> None:
    """Write the file whole, mode 0600: a reader sees the old grant or the new one, never a part."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, and whoever created a leftover temporary file
        with os.fdopen(fd, "wb") as fh:
            fh.write(encode(grant, key))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def mode_problem(path: str) -> str | None:
    """A warning when others than the owner may read the file."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    return f"{path} is readable by others (mode {mode:04o}): chmod 600 it" if mode & 0o077 else None


@contextlib.asynccontextmanager
async def locked(path: str, timeout_s: float = LOCK_TIMEOUT_S) -> AsyncIterator[bool]:
    """Hold the exclusive lock on `<path>.lock` (polled: a waiting task stays cancellable): True, or
    False where the lock file cannot be made (a directory the proxy cannot write to: it cannot
    rewrite the token file there either). Raises TimeoutError when another process holds the lock
    longer than `timeout_s`."""
    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}.lock is held by another process") from None
                await asyncio.sleep(0.02)
        yield True
    finally:
        os.close(fd)  # releases the lock
