# syntax=docker/dockerfile:1.7
# mcp-policy-proxy's image: every wheel is built in the first stage; the second holds only the
# installed virtualenv (no compilers, no build tools, no test extras, no pip).
#
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t mcp-policy-proxy:0.1.0 .
#   docker run --read-only --tmpfs /tmp -p 8080:8080 \
#     -v "$PWD/proxy.yaml:/etc/mcp-policy-proxy/config.yaml:ro" mcp-policy-proxy:0.1.0
#
# The root filesystem may be read-only: the proxy writes no file of its own (bytecode is compiled at
# install time, PYTHONDONTWRITEBYTECODE stops writes at run time, the body checker's child process
# talks over pipes, metrics live in memory); /tmp (HOME and TMPDIR) is the one writable path it
# expects, a tmpfs or an emptyDir. A `decision_log.sink: file:PATH` must name a path on a volume.
# docs/deploy.md has the rest; tests/deploy/test_package.py runs what this image runs.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY proxy/ proxy/
# proxy/bundled_policies links to policies/: the wheel built below carries a copy
COPY policies/ policies/
# The proxy's wheel and one wheel per dependency (binary wheels where PyPI has them; anything that
# had to be compiled is compiled here, never in the final stage).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mcp-policy-proxy" \
      org.opencontainers.image.description="Policy-enforcing reverse proxy for the Model Context Protocol (Rego, every MCP HTTP transport)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MCP_POLICY_PROXY_CONFIG=/etc/mcp-policy-proxy/config.yaml \
    HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
# The wheels come in through a bind mount, so no layer keeps them; pip then leaves the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --no-index --find-links /wheels "mcp-policy-proxy==${VERSION}" \
    && pip uninstall --yes --root-user-action=ignore pip setuptools wheel
# A numeric uid (Kubernetes' runAsNonRoot can check it without a passwd entry) that owns nothing.
USER 10001:10001
EXPOSE 8080
# No curl in a slim image: the standard library asks /healthz (HEALTHCHECK_URL names another port).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]
# SIGTERM drains (limits.shutdown_grace_s) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mcp-policy-proxy"]
# The config comes from $MCP_POLICY_PROXY_CONFIG (mount it there, or give --config); listening
# beyond loopback needs authentication configured, or auth.anonymous: true (the proxy refuses
# otherwise).
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
