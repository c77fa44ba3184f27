"""TLS toward the upstream: the one client context (built at start, never per request), and a
failed handshake told in plain words.

Verification is always on: the certificate chain must lead to a trusted CA (`upstream.tls.ca_file`,
else the default trust store, which honours SSL_CERT_FILE/SSL_CERT_DIR), and the certificate must
name the host (`upstream.tls.server_name` when set, which is also the SNI sent). There is no switch
to turn it off. A failure becomes (reason, message, detail): `reason` a bounded metric label
(FAILURE_REASONS), `message` the words a client reads, `detail` OpenSSL's own for the log. None
of them holds a secret: certificates are public, the key and its password never appear.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import UpstreamTls

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# The labels of mcp_proxy_upstream_connect_failures_total this module gives.
FAILURE_REASONS = ("tls_untrusted", "tls_expired", "tls_not_yet_valid", "tls_hostname", "tls_protocol",
                   "tls_client_cert", "tls_handshake", "tls_closed")

# OpenSSL's X509_V_ERR_* codes (SSLCertVerificationError.verify_code) the proxy names.
_EXPIRED, _NOT_YET_VALID = 10, 9
_HOST_MISMATCH = frozenset({62, 64})  # host name, IP address
_UNTRUSTED = {2: "its issuer is unknown", 18: "it is self-signed", 19: "its chain ends in an untrusted self-signed CA",
              20: "it was issued by an unknown certificate authority",
              21: "it was issued by an unknown certificate authority"}
# Alerts the upstream sent about the proxy's client certificate (or its absence).
_CLIENT_CERT_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it requires a client certificate (upstream.tls.cert_file)",
    "TLSV1_ALERT_UNKNOWN_CA": "it does not trust the CA that issued it",
    "SSLV3_ALERT_BAD_CERTIFICATE": "it found it bad",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "it could not accept it",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "it was revoked",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "its type is not supported",
    "TLSV1_ALERT_ACCESS_DENIED": "access is denied",
}
_PROTOCOL = frozenset({"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE",
                       "WRONG_SSL_VERSION", "TLSV1_ALERT_INAPPROPRIATE_FALLBACK"})
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                      "UNKNOWN_PROTOCOL"})


class TlsSetupError(Exception):
    """upstream.tls cannot be used: `key` is the setting at fault (ca_file, cert_file, …)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def client_context(tls: UpstreamTls) -> ssl.SSLContext:
    """The context of every TLS connection to the upstream. Raises TlsSetupError naming the setting."""
    if tls.ca_file:
        _pem("ca_file", tls.ca_file, b"-----BEGIN CERTIFICATE-----", "a PEM certificate (-----BEGIN CERTIFICATE-----)")
    if tls.cert_file and tls.key_file:
        _pem("cert_file", tls.cert_file, b"-----BEGIN CERTIFICATE-----", "a PEM certificate")
        _pem("key_file", tls.key_file, b"PRIVATE KEY-----", "a PEM private key (-----BEGIN … PRIVATE KEY-----)")
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)  # no ca_file: the default store
    except ssl.SSLError as exc:
        raise TlsSetupError("ca_file", f"holds no usable certificate ({exc.reason or exc})") from None
    context.minimum_version = MIN_VERSIONS[tls.min_version]
    context.set_alpn_protocols(["http/1.1"])  # the only protocol the client speaks
    if tls.cert_file and tls.key_file:
        asked: list[bool] = []

        def password() -> bytes:  # never OpenSSL's prompt on the terminal: a service has none
            asked.append(True)
            return (tls.key_password or "").encode()

        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=password)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise TlsSetupError("key_file", "is not the key of the certificate in cert_file") from None
            if asked:
                raise TlsSetupError("key_password_file", "is not the password of key_file" if tls.key_password
                                    else "is required: key_file is encrypted") from None
            raise TlsSetupError("cert_file", f"and key_file cannot be used together ({exc.reason or exc})") from None
    return context


def _pem(key: str, path: str, marker: bytes, what: str) -> None:
    """A readable file holding `marker`: a clear error before OpenSSL's terse ones."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(1024 * 1024)
    except OSError as exc:
        raise TlsSetupError(key, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    if marker not in data:
        raise TlsSetupError(key, f"does not hold {what}")


def describe(exc: BaseException) -> tuple[str, str, str] | None:
    """(reason, message, detail) of a TLS failure toward the upstream, or None when `exc` is none."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, detail = exc.verify_code, exc.verify_message or str(exc)
        if code == _EXPIRED:
            return "tls_expired", "Upstream TLS certificate has expired", detail
        if code == _NOT_YET_VALID:
            return "tls_not_yet_valid", "Upstream TLS certificate is not valid yet (check the clocks)", detail
        if code in _HOST_MISMATCH:
            return "tls_hostname", "Upstream TLS certificate is not valid for the upstream's host name", detail
        why = _UNTRUSTED.get(code, "it was rejected")
        return "tls_untrusted", f"Upstream TLS certificate is not trusted: {why}", detail
    if isinstance(exc, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError):
        message = "Upstream closed the connection during the TLS handshake"
        return "tls_handshake", message, str(exc) or type(exc).__name__
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = exc.reason or ""
    return (*_alert(reason), reason or str(exc))


def _alert(reason: str) -> tuple[str, str]:
    """An OpenSSL error reason (mostly an alert the upstream sent) → (reason, message)."""
    if reason in _CLIENT_CERT_ALERTS:
        return "tls_client_cert", f"Upstream refused the proxy's TLS client certificate: {_CLIENT_CERT_ALERTS[reason]}"
    if reason in _PROTOCOL:
        return "tls_protocol", "Upstream TLS failed: no TLS version both sides accept (upstream.tls.min_version)"
    if reason in _NOT_TLS:
        return "tls_handshake", "Upstream TLS failed: the upstream does not speak TLS there (an http:// port?)"
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        return "tls_handshake", ("Upstream refused the TLS handshake (a client certificate it requires, or no "
                                 "cipher both sides accept)")
    return "tls_handshake", "Upstream TLS handshake failed"


def closed_before_answer() -> tuple[str, str, str]:
    """A new TLS connection the upstream closed, without a word, before answering its first request:
    what a server that refuses the client certificate after a TLS 1.3 handshake may do."""
    return ("tls_closed", "Upstream closed the TLS connection before answering (does it require a client "
                          "certificate it did not get or accept?)", "closed after the handshake")
