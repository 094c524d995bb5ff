# syntax=docker/dockerfile:1
# snapsync's image: `docker build -t snapsync .`, then see docker-compose.yml and docs/deploy.md.
# The builder installs snapsync and its dependencies into a virtual environment; the final
# image is python:3.11-slim plus that environment, run as an unprivileged user.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
# A wheel, not an editable install: the environment must not point back into /src.
RUN /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/snapsync-*.whl \
 && /opt/venv/bin/snapsync --version

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="snapsync" \
      org.opencontainers.image.description="Mirrors Huawei Cloud Workspace desktop snapshots into PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SNAPSYNC_HTTP_HOST=0.0.0.0 \
    SNAPSYNC_LOG_FORMAT=json \
    SNAPSYNC_DATA_DIR=/var/lib/snapsync/embedded
RUN groupadd --system --gid 10001 snapsync \
 && useradd --system --uid 10001 --gid snapsync --home-dir /var/lib/snapsync --create-home \
      --shell /usr/sbin/nologin snapsync
COPY --from=builder /opt/venv /opt/venv
# The working directory is where a .env would be read from; configure the container with
# environment variables (docker-compose.yml passes .env through env_file) instead.
WORKDIR /var/lib/snapsync
USER 10001:10001
# /healthz, /readyz and /metrics of `snapsync run`.
EXPOSE 9108
STOPSIGNAL SIGTERM
ENTRYPOINT ["snapsync"]
CMD ["run"]
