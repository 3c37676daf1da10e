#!/bin/sh
# Entrypoint of the pg_to_bq image: one image for ECS and AWS Lambda.
#
# - On Lambda (AWS_LAMBDA_RUNTIME_API is set) it starts the Lambda runtime
#   interface client with the pg_to_bq handler. The handler is, in order:
#   $PG_TO_BQ_LAMBDA_HANDLER, the single argument if it looks like a dotted
#   Python path (the function's ImageConfig.Command), or the default below.
# - Anywhere else it runs the given command: `dagster api grpc ...` (the
#   default CMD), `dagster api execute_run ...`, `pg-to-bq ...`, ...
#
# Before that it creates the writable directories under /tmp (the root
# filesystem may be read-only) and a dagster.yaml that disables Dagster
# telemetry when $DAGSTER_HOME has none.
set -eu

DEFAULT_LAMBDA_HANDLER="pg_to_bq.launchers.lambda_handler.handler"

: "${PG_TO_BQ_WORK_DIR:=/tmp/pg_to_bq}"
: "${DAGSTER_HOME:=/tmp/dagster_home}"
: "${DLT_DATA_DIR:=${PG_TO_BQ_WORK_DIR}/dlt}"
export PG_TO_BQ_WORK_DIR DAGSTER_HOME DLT_DATA_DIR

fail() {
    echo "pg-to-bq-entrypoint: $*" >&2
    exit 1
}

for dir in "$PG_TO_BQ_WORK_DIR" "$DLT_DATA_DIR" "$DAGSTER_HOME"; do
    mkdir -p "$dir" 2>/dev/null \
        || fail "cannot create directory '$dir' (is it on a read-only filesystem?); point" \
                "PG_TO_BQ_WORK_DIR, DLT_DATA_DIR and DAGSTER_HOME at a writable location such as /tmp"
done

# PG_TO_BQ_DAGSTER_YAML names an instance config to use (the image carries the production
# one, deploy/dagster.yaml, at /opt/pg_to_bq/dagster.yaml): it is copied into DAGSTER_HOME.
if [ -n "${PG_TO_BQ_DAGSTER_YAML:-}" ] && [ ! -e "$DAGSTER_HOME/dagster.yaml" ]; then
    cp "$PG_TO_BQ_DAGSTER_YAML" "$DAGSTER_HOME/dagster.yaml" 2>/dev/null \
        || fail "cannot copy PG_TO_BQ_DAGSTER_YAML='$PG_TO_BQ_DAGSTER_YAML' into '$DAGSTER_HOME'"
fi

if [ ! -e "$DAGSTER_HOME/dagster.yaml" ] && [ ! -e "$DAGSTER_HOME/dagster.yml" ]; then
    printf 'telemetry:\n  enabled: false\n' >"$DAGSTER_HOME/dagster.yaml" 2>/dev/null \
        || fail "cannot write '$DAGSTER_HOME/dagster.yaml'; DAGSTER_HOME must be writable"
fi

if [ -n "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    handler="${PG_TO_BQ_LAMBDA_HANDLER:-}"
    if [ -z "$handler" ] && [ "$#" -eq 1 ] \
        && printf '%s' "$1" | grep -Eq '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$'; then
        handler="$1"
    fi
    exec python -m awslambdaric "${handler:-$DEFAULT_LAMBDA_HANDLER}"
fi

if [ "$#" -eq 0 ]; then
    set -- dagster api grpc -m pg_to_bq.definitions -h 0.0.0.0 -p 4000
fi
exec "$@"
