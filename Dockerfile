# pg_to_bq: one image for ECS (code server and run worker) and AWS Lambda.
#
#   ECS code location:  dagster api grpc -m pg_to_bq.definitions -h 0.0.0.0 -p 4000  (default CMD)
#   ECS run worker:     dagster api execute_run ...   (EcsRunLauncher overrides the command)
#   Lambda:             AWS_LAMBDA_RUNTIME_API set -> python -m awslambdaric <handler>
#
# Runs as a non-root user on a read-only root filesystem: everything it writes
# (dlt, Dagster home, telemetry ids, caches) goes under /tmp.
#
# BASE_IMAGE must be a Debian-based image with python3 (>= 3.11) and its venv
# module; the tests substitute a local debootstrap image for the public one.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- requirements: pyproject.toml -> requirements.txt --------------------------
# Only the dependency list reaches the next stage, so editing other parts of
# pyproject.toml (version, tool settings) keeps the dependency layer cached.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > requirements.txt

# --- deps: a virtual environment with the dependencies only --------------------
# Rebuilt only when the dependency list changes. Wheels only, so no compiler is
# needed in any stage.
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --only-binary=:all: -r /tmp/requirements.txt

# --- wheel: the pg_to_bq package, built against the dependencies ---------------
FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml ./
COPY pg_to_bq ./pg_to_bq
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /dist .

# --- runtime ---------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG APP_UID=10001
RUN groupadd --gid "${APP_UID}" pgtobq \
    && useradd --no-log-init --uid "${APP_UID}" --gid pgtobq \
       --home-dir /tmp --no-create-home --shell /usr/sbin/nologin pgtobq
# The dependencies, then the package, in separate layers: a code change ships
# a layer of a few hundred kB, not the whole environment.
COPY --from=deps /opt/venv /opt/venv
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/pg-to-bq-entrypoint
# The production instance config; used when PG_TO_BQ_DAGSTER_YAML points at it.
COPY deploy/dagster.yaml /opt/pg_to_bq/dagster.yaml
# The webservers' and the daemon's workspace: the code server over gRPC.
COPY deploy/workspace.yaml /opt/pg_to_bq/workspace.yaml
COPY --from=wheel /dist/ /opt/dist/
RUN PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /opt/dist/*.whl \
    && /opt/venv/bin/python -c "import pg_to_bq"
# Every writable path lives under /tmp (Lambda's only writable directory):
#   HOME          ~/.dagster (telemetry user id), ~/.dlt (dlt global dir), caches
#   DAGSTER_HOME  instance directory; the entrypoint writes a dagster.yaml with
#                 telemetry disabled if none is there
#   DLT_DATA_DIR  dlt pipelines' working directories
# DAGSTER_DISABLE_TELEMETRY only stops Dagster's log upload; the dagster.yaml
# setting is what stops it writing telemetry files. dlt's own telemetry is
# switched off with RUNTIME__DLTHUB_TELEMETRY.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    PG_TO_BQ_WORK_DIR=/tmp/pg_to_bq \
    DAGSTER_HOME=/tmp/dagster_home \
    DAGSTER_DISABLE_TELEMETRY=1 \
    DLT_DATA_DIR=/tmp/pg_to_bq/dlt \
    RUNTIME__DLTHUB_TELEMETRY=false
WORKDIR /tmp
USER ${APP_UID}:${APP_UID}
EXPOSE 4000
ENTRYPOINT ["/usr/local/bin/pg-to-bq-entrypoint"]
CMD ["dagster", "api", "grpc", "-m", "pg_to_bq.definitions", "-h", "0.0.0.0", "-p", "4000"]
