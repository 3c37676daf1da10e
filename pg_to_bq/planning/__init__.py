"""Planning: pure decisions, from settings and the catalog to each table's load plan.

Owns the settings (`settings`, `overrides`, `secrets` payloads), the catalog model and its
snapshot (`catalog`), table plans and their selection (`tables`), the type map
(`type_rules`, `types`), destination names (`naming`), sensitive columns (`sensitive`),
which tables share a step (`groups`), schema evolution rules (`evolution`) and what an
error means (`errors`).

May import: the standard library, PyYAML, croniter, and pyarrow's type objects. Never
Dagster, dlt, a database driver or a cloud SDK: everything here is testable without them.
"""
