"""Prerequisites: the facts from one query on real servers (wal_level=logical and =replica),
and the findings with their fixes (the pure rules, also for RDS and Cloud SQL)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pg_to_bq.postgres.cdc.prerequisites import Facts, assess, fetch_facts

from .conftest import run, start_server


@pytest.fixture(scope="module")
def replica_server() -> Iterator[str]:
    """A small second server with the default wal_level (replica)."""
    server = start_server("pg_to_bq_cdc_replica_", {"wal_level": "replica"})
    try:
        yield server.url("postgres")
    finally:
        server.destroy()


def by_subject(assessment, scope: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for finding in assessment.findings:
        if finding.scope == scope:
            out.setdefault(finding.subject, []).append(finding)
    return out


def test_tables_that_can_and_cannot_be_captured(db: str) -> None:
    run(db, "CREATE TABLE keyed (id int PRIMARY KEY, v text)",
        "CREATE TABLE nokey (a int, b text)",
        "CREATE TABLE full_identity (a int)", "ALTER TABLE full_identity REPLICA IDENTITY FULL",
        "CREATE TABLE nothing (id int PRIMARY KEY)", "ALTER TABLE nothing REPLICA IDENTITY NOTHING",
        "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY)",
        "CREATE TABLE parted (id int, at date) PARTITION BY RANGE (at)",
        "CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        "CREATE TABLE kparted (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
        "CREATE TABLE kparted_1 PARTITION OF kparted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        "CREATE VIEW v AS SELECT 1 AS one",
        # (a foreign partition, over a server it never needs to reach)
        "CREATE EXTENSION IF NOT EXISTS postgres_fdw",
        "CREATE SERVER far FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'nowhere')",
        "CREATE TABLE fparted (id int, region int) PARTITION BY LIST (id)",
        "CREATE TABLE fparted_here PARTITION OF fparted FOR VALUES IN (1)",
        "CREATE FOREIGN TABLE fparted_far PARTITION OF fparted FOR VALUES IN (2) SERVER far")
    with psycopg.connect(db, autocommit=True) as conn:
        facts = fetch_facts(conn)
        assert {t.name for t in facts.tables} == {"keyed", "nokey", "full_identity", "nothing",
                                                  "scratch", "parted", "kparted", "fparted"}
        named = fetch_facts(conn, [("public", "parted_1"), ("public", "v"), ("public", "gone")])
    assessment = assess(facts)
    assert assessment.can_capture
    assert sorted(assessment.capturable) == [("public", "full_identity"), ("public", "keyed"),
                                             ("public", "kparted")]
    tables = by_subject(assessment, "table")
    [nokey] = tables['"public"."nokey"']
    assert nokey.level == "warning"
    assert "rejects every UPDATE and DELETE" in nokey.problem and "today's mode" in nokey.problem
    assert 'ALTER TABLE "public"."nokey" REPLICA IDENTITY FULL;' in nokey.fix
    assert tables['"public"."nothing"'][0].fix.startswith(
        'ALTER TABLE "public"."nothing" REPLICA IDENTITY DEFAULT;')
    [full] = tables['"public"."full_identity"']
    assert full.level == "info" and "whole old row" in full.problem
    [scratch] = tables['"public"."scratch"']
    assert scratch.level == "error" and scratch.fix == 'ALTER TABLE "public"."scratch" SET LOGGED;'
    [parted] = tables['"public"."parted"']
    assert 'ALTER TABLE "public"."parted_1" REPLICA IDENTITY FULL;' in parted.fix
    assert '"public"."kparted"' not in tables  # its partitions inherit the primary key
    named_findings = by_subject(assess(named), "table")
    assert ("public", "fparted") not in assessment.capturable
    [fparted] = tables['"public"."fparted"']
    assert fparted.level == "info" and fparted.problem.startswith(
        'its partition(s) "public"."fparted_far" are foreign tables: their rows are not in '
        "this server's WAL") and not fparted.fix
    assert "captured through its root" in named_findings['"public"."parted_1"'][0].problem
    assert named_findings['"public"."v"'][0].problem.startswith("a view")
    assert named_findings['"public"."gone"'][0].level == "error"
    server = by_subject(assessment, "server")
    assert list(server) == ["max_slot_wal_keep_size"]  # unlimited: a warning, with the setting


def test_a_role_without_replication_or_ownership(db: str) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    run(db, "CREATE TABLE keyed (id int PRIMARY KEY)", f"CREATE ROLE {role} LOGIN",
        f"GRANT SELECT ON keyed TO {role}")
    try:
        with psycopg.connect(db.replace("postgres@", f"{role}@", 1), autocommit=True) as conn:
            facts = fetch_facts(conn, [("public", "keyed")])
        found = by_subject(assess(facts), "role")[role]
        assert [f.level for f in found] == ["error", "error", "error"]
        assert found[0].fix == f'ALTER ROLE "{role}" WITH REPLICATION;'
        assert "GRANT CREATE ON DATABASE" in found[1].fix
        assert "does not own" in found[2].problem and "owned by postgres" in found[2].problem
        assert found[2].fix.startswith('CREATE PUBLICATION "pg_to_bq" FOR TABLE "public"."keyed"')
        assert not assess(facts).can_capture
    finally:
        run(db, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_wal_level_replica(replica_server: str) -> None:
    run(replica_server, "CREATE TABLE IF NOT EXISTS keyed (id int PRIMARY KEY)")
    with psycopg.connect(replica_server, autocommit=True) as conn:
        facts = fetch_facts(conn)
    assessment = assess(facts)
    assert not assessment.can_capture
    [wal_level] = by_subject(assessment, "server")["wal_level"]
    assert wal_level.level == "error" and "'replica'" in wal_level.problem
    assert wal_level.fix == "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL"
    assert assessment.capturable == (("public", "keyed"),)  # the tables themselves are fine


def _facts(**changes) -> Facts:
    base = Facts(server_version=160004, wal_level="replica", rds_logical_replication=None,
                 cloudsql_logical_decoding=None, max_replication_slots=10,
                 replication_slots_used=0, max_wal_senders=10, wal_senders_used=0,
                 max_slot_wal_keep_size_mb=10240, in_recovery=False, role="app", database="shop",
                 superuser=False, replication=False, rds_replication_member=False,
                 can_create_in_database=True, publication="pg_to_bq", publication_exists=True,
                 slot="pg_to_bq", slot_exists=True)
    return dataclasses.replace(base, **changes)


def test_managed_services_get_their_own_fix() -> None:
    rds = assess(_facts(rds_logical_replication="0"))
    [setting] = by_subject(rds, "server")["rds.logical_replication"]
    assert "rds.logical_replication = 1" in setting.fix and "parameter group" in setting.fix
    assert by_subject(rds, "role")["app"][0].fix == 'GRANT rds_replication TO "app";'
    assert assess(_facts(rds_logical_replication="1", wal_level="logical",
                         rds_replication_member=True)).findings == ()
    cloudsql = assess(_facts(cloudsql_logical_decoding="off"))
    [flag] = by_subject(cloudsql, "server")["cloudsql.logical_decoding"]
    assert "--database-flags=cloudsql.logical_decoding=on" in flag.fix
    assert by_subject(cloudsql, "role")["app"][0].fix == 'ALTER ROLE "app" WITH REPLICATION;'
    full = assess(_facts(wal_level="logical", replication=True, slot_exists=False,
                         replication_slots_used=10))
    assert by_subject(full, "server")["max_replication_slots"][0].level == "error"
    standby = assess(_facts(wal_level="logical", replication=True, in_recovery=True,
                            server_version=150000))
    assert by_subject(standby, "server")["pg_is_in_recovery()"][0].level == "error"
