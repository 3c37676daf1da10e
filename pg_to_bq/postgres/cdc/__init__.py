"""Change capture from PostgreSQL's logical replication: the PostgreSQL side only.

This subpackage owns everything that talks to PostgreSQL about change capture:

- `pgoutput`: a decoder of the messages of PostgreSQL's built-in `pgoutput` plugin;
- `walsender`: a minimal client of the replication protocol (libpq through `psycopg.pq`);
- `slot`: the publication and the logical replication slot (create, export a snapshot,
  status, advance, drop);
- `stream`: reading the committed changes up to a point fixed at the start of a read;
- `replay`: the pieces for copying a table while the slot keeps streaming;
- `prerequisites`: what the server, the role and each table need, and the exact fix;
- `errors`: the errors raised, each saying what to do (`DbaActionRequired.sql`).

It may import the standard library, `psycopg` (v3), `psycopg2` and `pyarrow` (today it uses
only the first two: see `walsender` for why not psycopg2's replication support), nothing
from Dagster or dlt, and nothing else from `pg_to_bq`: applying changes to a destination,
settings, the CLI and Dagster wiring live elsewhere and call in here, never the other way
round.
"""
