"""The official-SDK test server (tests/peers/sdk_server.py) over HTTPS: uvicorn's own TLS.

Run: ``python -m tests.peers.tls_sdk_server --mode MODE --port PORT --cert CERT --key KEY
[--client-ca CA]`` (cwd = repository root). With ``--client-ca`` a client certificate issued by
that CA is required (mTLS). MCP_RECORD_FILE records requests as sdk_server does.
"""

from __future__ import annotations

import argparse
import ssl

import uvicorn

from tests.peers.sdk_server import MODES, build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca")
    args = parser.parse_args(argv)
    uvicorn.run(build_app(args.mode), host="127.0.0.1", port=args.port, log_level="warning",
                timeout_graceful_shutdown=1, ssl_certfile=args.cert, ssl_keyfile=args.key,
                ssl_ca_certs=args.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED if args.client_ca else ssl.CERT_NONE)


if __name__ == "__main__":
    main()
