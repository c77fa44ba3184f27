"""nginx as the floor: the least a production reverse proxy spends to relay the same request.

One master and one worker, run as the current user from a generated config in a temporary
directory (pid, error log and temp paths there; no access log), in front of the benchmark's
upstream with a keep-alive pool, as an nginx deployment in front of an MCP server would be:
HTTP/1.1 to the upstream with ``Connection`` cleared; under ``/unbuffered/`` buffering is off, as
for SSE answers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

NGINX = "/usr/sbin/nginx"

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    upstream mcp_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mcp_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        # SSE answers relayed as they come (what an MCP deployment sets where answers may be
        # streams): /unbuffered/mcp is the upstream's /mcp.
        location /unbuffered/ {{
            proxy_pass http://mcp_upstream/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


def binary() -> str | None:
    """The nginx executable, if installed (Debian: apt-get install nginx-light)."""
    if Path(NGINX).exists():
        return NGINX
    return shutil.which("nginx")


def write_config(tmp: Path, port: int, upstream_port: int) -> Path:
    path = tmp / "nginx.conf"
    path.write_text(CONFIG.format(tmp=tmp, port=port, upstream_port=upstream_port))
    return path


def argv(executable: str, tmp: Path, config: Path) -> list[str]:
    # -e: the error log before the config is read (Debian's default, /var/log/nginx, is not ours).
    return [executable, "-p", str(tmp), "-c", str(config), "-e", str(tmp / "error.log")]
