# syntax=docker/dockerfile:1
# The chat-storage service. Production settings come from the environment
# (DATABASE_URL, REDIS_URL, CHAT_*; see .env.example).

# The base: the official Python 3.11 image on Debian 12 (bookworm), pinned by tag. Pin
# it by digest as well on a machine that reaches Docker Hub; this file was written and
# tested where no registry is reachable, so no digest was looked up and none is made up:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   # -> sha256:...
#   ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<that digest>
# tests/image builds this file with a stand-in made from Debian's packages, passed as
# --build-arg PYTHON_IMAGE=...; the default below is what every other build uses.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# constraints.txt pins every dependency: the image installs what CI tested and audited
COPY pyproject.toml README.md LICENSE constraints.txt ./
# chat_storage/ links to the folders below: the wheel ships them as one package, with
# the migrations (sql/) and the demo page (web/) as package data
COPY chat_storage ./chat_storage
COPY server ./server
COPY runtime ./runtime
COPY actors ./actors
COPY storage ./storage
COPY sql ./sql
COPY web ./web
# the JavaScript client the demo page imports (chat_storage/client_js links to it)
COPY clients/js/src ./clients/js/src
# with the tracing extra: OTEL_* turns tracing on (docs/observability.md); off, it costs
# nothing (loadtest/RESULTS.md)
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --constraint constraints.txt '.[tracing]'

FROM ${PYTHON_IMAGE}
# pg_dump and pg_restore for `chat-storage backup` / `restore` (Debian 12: version 15;
# pg_dump must be at least as new as the database server)
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin chat \
    && mkdir /data && chown chat:chat /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHAT_DATA_DIR=/data \
    CHAT_HOST=0.0.0.0
WORKDIR /app
USER chat
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CHAT_PORT', '8080'), timeout=2)"]
# the address is CHAT_HOST (above), not a flag: a flag would win over the environment
CMD ["chat-storage", "serve"]
