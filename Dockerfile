# syntax=docker/dockerfile:1
# BranchKey Gateway image: `docker build -t branchkey-gateway .` (BuildKit). It runs the gateway
# (`serve`, the default) and, with `aggregator --host 0.0.0.0 ...`, the local aggregator.
# deploy/README.md explains running it, credentials and the compose file.

# Builder: a wheel of the project and of every runtime dependency, resolved from the package index.
FROM python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=deploy/install.sh,target=/tmp/install.sh \
    sh /tmp/install.sh wheels /src /wheels

# Runtime: the same base, the wheels installed into /opt/venv from the builder alone (no index, no
# build tools, no test extra), run as an unprivileged user.
FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="BranchKey Gateway" \
      org.opencontainers.image.description="HTTP sidecar for BranchKey federated learning, and a local BranchKey-compatible aggregator"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=deploy/install.sh,target=/tmp/install.sh \
    sh /tmp/install.sh venv /wheels /opt/venv
# uid/gid 10001: above any host's regular users. The data directories exist (owned by the user) so
# that a named volume mounted on one starts out writable by it.
RUN groupadd --gid 10001 branchkey \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin branchkey \
    && mkdir -p /data/gateway /data/aggregator \
    && chown -R 10001:10001 /data
# Inside a container the gateway must listen on every interface to be reachable at all; set
# GATEWAY_TOKEN whenever anything but its own trainer can reach it (deploy/README.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_DATA_DIR=/data/gateway
USER 10001:10001
WORKDIR /data
EXPOSE 8000
# No curl in the slim image: python asks /healthz (exempt from GATEWAY_TOKEN). http.client, unlike
# urllib, ignores HTTP_PROXY, which must not catch a request to the container itself.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import http.client, os, sys; c = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('GATEWAY_PORT') or 8000), timeout=3); c.request('GET', '/healthz'); sys.exit(c.getresponse().status != 200)"]
ENTRYPOINT ["branchkey-gateway"]
CMD ["serve"]
