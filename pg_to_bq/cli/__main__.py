"""`python -m pg_to_bq.cli`: the `pg-to-bq` command."""

from pg_to_bq.cli.main import run

run()
