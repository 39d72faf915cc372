# syntax=docker/dockerfile:1
# One image for every handler set; ATLANTIC_HANDLERS (users,catalog,orders,payments,analytics)
# picks which ones a container runs. See compose.yaml.
#
#   docker build -t atlantic .
#   docker run --rm -e ATLANTIC_HANDLERS=catalog -e ATLANTIC_NATS_URL=... atlantic
#
# Both stages use the same base so the venv's interpreter path (/usr/local/bin/python3.11) and
# ABI match when the venv is copied across. Pin a digest (python:3.11-slim@sha256:...) for
# reproducible release builds.

FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when the
# dependency list changes, not on every code edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project itself, installed (not editable) into the venv: the venv then holds the code
# and its package data (the SQL migrations), so the runtime stage needs nothing else from the
# build context, and no build tool or source checkout ships in the final image.
# (README.md* because a wildcard that matches nothing is not an error for BuildKit: the readme
# only feeds package metadata.)
COPY README.md* ./
COPY contracts ./contracts
COPY handlers ./handlers
COPY storage ./storage
COPY runtime ./runtime
# pip and setuptools leave the venv afterwards: nothing imports them at run time, and an image
# that cannot install packages is one less tool for an intruder.
RUN pip install --no-deps . \
    && python -m compileall -q /opt/venv/lib/python3.11/site-packages \
    && pip uninstall -y -q pip setuptools


FROM python:3.11-slim AS runtime

# A fixed numeric uid/gid, so orchestrators can check "runAsNonRoot" and volumes can be
# chowned ahead of time.
RUN groupadd --system --gid 10001 atlantic \
    && useradd --system --uid 10001 --gid atlantic --home-dir /app --shell /usr/sbin/nologin atlantic \
    && install -d -o atlantic -g atlantic /app /var/lib/atlantic

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ATLANTIC_DATA_DIR=/var/lib/atlantic \
    ATLANTIC_HANDLERS=all

WORKDIR /app
USER 10001:10001

# No HEALTHCHECK: a handler set serves no HTTP. Liveness is visible on NATS instead
# (`$SRV.PING.atlantic-<set>` answers while the set runs), and the process exits on fatal errors
# so the orchestrator restarts it.
#
# SIGTERM drains in-flight requests and events before exit (runtime/app.py); give the container
# longer than ATLANTIC_GRACEFUL_TIMEOUT_SECONDS to stop.
STOPSIGNAL SIGTERM

# CMD rather than ENTRYPOINT, so other commands read naturally:
#   docker compose run --rm users atlantic users create-admin --email E --password P
CMD ["atlantic", "serve"]
