"""The `pg-to-bq` command: `demo`, `discover`, `sync` (`main`), the demo's embedded stack
(`demo`), and the in-process Dagster instance a sync records its run in (`sync_instance`).

May import: `pg_to_bq.orchestration` and everything below it.
"""
