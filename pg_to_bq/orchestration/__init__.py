"""Orchestration: the Dagster side, thin wiring around the parts below.

Owns asset names and keys (`names`), asset specs (`specs`), the step assets
(`step_assets`) and what a step does when it runs (`steps`), the catalog asset
(`catalog_asset`), the builder of one mirrored database's definitions (`mirror`), the
`PostgresMirror` component (`component`), the standalone code location
(`code_location`), the resources (`resources`), Dagster storage helpers
(`pooled_storage`, `storage_connections`) and the per-table outcomes a step publishes
(`progress`).

May import: every part below (`load`, `checks`, `postgres`, `destinations`, `planning`)
and Dagster. Nothing below imports it.
"""
