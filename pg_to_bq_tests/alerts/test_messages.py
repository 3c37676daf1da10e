"""Messages, pure: one per event however many tables, causes grouped, secrets redacted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pg_to_bq.alerts.messages import (
    MAX_SUBJECT,
    CheckFailure,
    RunReport,
    StaleTable,
    TableFailure,
    redact,
    run_message,
    stale_message,
)

PREFIX = ("bigquery", "raw")


def table(name: str) -> tuple[str, ...]:
    return (*PREFIX, name)


@pytest.mark.parametrize(("text", "expected"), [
    ("cannot connect to postgresql://loader:s3cr3t@db:5432/shop: timeout",
     "cannot connect to postgresql://loader:***@db:5432/shop: timeout"),
    ("postgresql+psycopg2://u:p%40ss@h/db and https://user:tok@example.com/x",
     "postgresql+psycopg2://u:***@h/db and https://user:***@example.com/x"),
    # An unencoded '@' in the password: masked up to the last '@' before the host.
    ("url='postgres://u:p@ss@host/db'", "url='postgres://u:***@host/db'"),
    ("host=db user=loader password=s3cr3t dbname=shop",
     "host=db user=loader password=*** dbname=shop"),
    ("password='a b\\'c' sslmode=require", "password=*** sslmode=require"),
    ("postgresql://loader@db/shop has no password", "postgresql://loader@db/shop has no password"),
    ("see https://example.com/runs/1", "see https://example.com/runs/1"),
])
def test_redact_url_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_known_secrets() -> None:
    assert redact("token xoxb-1234-abcd leaked", ["xoxb-1234-abcd"]) == "token *** leaked"
    # Too short to mask without mangling the text.
    assert redact("a b c", ["b"]) == "a b c"


def test_failed_run_of_300_tables_is_one_message_with_causes_grouped() -> None:
    denied = "PostgreSQL: permission denied for table x (SQLSTATE 42501)"
    timeout = "PostgreSQL: canceling statement due to statement timeout (SQLSTATE 57014)"
    failures = [TableFailure(table(f"t{i:03d}"), denied if i % 3 else timeout) for i in range(300)]
    report = RunReport("r-1", "mirror_all_tables", succeeded=False, tables=tuple(failures))
    message = run_message(report, database="shop on db.internal",
                          ui_url="https://dagster.example.com")
    assert message is not None
    assert message.subject == "pg_to_bq shop on db.internal: mirror_all_tables failed: 300 tables"
    text = message.text
    assert text.startswith("pg_to_bq · shop on db.internal: run of mirror_all_tables failed: "
                           "300 tables failed.")
    assert "Failed tables (300) in bigquery/raw, by cause:" in text
    assert text.count(denied) == 1 and text.count(timeout) == 1
    # The most common cause first, each table listed once.
    assert text.index(denied) < text.index(timeout)
    assert f"• {denied} — 200 tables:" in text and f"• {timeout} — 100 tables:" in text
    for i in range(300):
        assert text.count(f"t{i:03d}") == 1
    assert text.endswith("Run: https://dagster.example.com/runs/r-1")


def test_causes_naming_their_own_table_are_one_cause() -> None:
    def denied(name: str) -> str:
        return f"PostgreSQL: permission denied for table {name} (SQLSTATE 42501); to fix: grant"

    failures = [TableFailure(table(f"public__{n}"), denied(n), (f"public.{n}",))
                for n in ("orders", "payments", "user")]
    failures += [
        TableFailure(table("public__a"), 'PostgreSQL: relation "public.a" does not exist',
                     ("public.a",)),
        TableFailure(table("public__b"), 'PostgreSQL: relation "public"."b" does not exist',
                     ("public.b",)),
        TableFailure(table("public__c"), "dlt: load job for public__c failed", ("public.c",)),
        # A table named like a word elsewhere in its cause: only its own name is replaced.
        TableFailure(table("public__user2"), "password authentication failed for user loader",
                     ("public.user2",)),
    ]
    message = run_message(RunReport("r", "j", succeeded=False, tables=tuple(failures)),
                          database="shop")
    assert message is not None
    assert ("• PostgreSQL: permission denied for table <table> (SQLSTATE 42501); to fix: grant"
            " — 3 tables:\n    public__orders, public__payments, public__user\n") in message.text
    assert ('• PostgreSQL: relation <table> does not exist — 2 tables:\n'
            '    public__a, public__b\n') in message.text
    # Alone under its cause: the cause as it was.
    assert "• dlt: load job for public__c failed — 1 table:" in message.text
    assert "• password authentication failed for user loader — 1 table:" in message.text


def test_failed_checks_and_errors() -> None:
    report = RunReport(
        "r-2", "mirror_all_tables", succeeded=False,
        checks=(CheckFailure(table("orders"), "matches_source",
                             "the destination has 3 fewer row(s)\nsecond line"),),
        errors=("step catalog: cannot reach postgresql://a:b@h/d",))
    message = run_message(report, database="shop")
    assert message is not None
    assert message.subject == "pg_to_bq shop: mirror_all_tables failed: 1 ERROR check"
    assert ("Failed ERROR checks (1) in bigquery/raw:\n"
            "• orders · matches_source: the destination has 3 fewer row(s)\n") in message.text
    assert "• step catalog: cannot reach postgresql://a:***@h/d" in message.text
    assert message.text.endswith("Run id: r-2")  # no UI URL: no link


def test_successful_run() -> None:
    assert run_message(RunReport("r", "j", succeeded=True), database="shop") is None
    message = run_message(RunReport("r", "j", succeeded=True,
                                    tables=(TableFailure(table("orders"), "gone"),)),
                          database="shop")
    assert message is not None
    assert message.subject == "pg_to_bq shop: 1 table failed in j"
    assert message.text.startswith("pg_to_bq · shop: run of j succeeded, but 1 table failed.")


def test_subject_is_what_sns_accepts() -> None:
    report = RunReport("r", "mirror_" + "x" * 200, succeeded=False,
                       tables=(TableFailure(table("t"), "boom"),))
    message = run_message(report, database="顧客データベース on db\nwith a newline")
    assert message is not None
    assert len(message.subject) <= MAX_SUBJECT < 100
    assert message.subject.isascii() and "\n" not in message.subject
    assert message.subject.startswith("pg_to_bq ???????? on db with a newline: mirror_xxx")
    assert message.subject.endswith("...")
    assert "顧客データベース" in message.text  # the text keeps the name


def test_stale_message() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    tables = [StaleTable(table("orders"), now - timedelta(hours=26)),
              StaleTable(table("customers"), None)]
    message = stale_message(tables, database="shop", ui_url="https://ui", now=now)
    assert message is not None
    assert message.subject == "pg_to_bq shop: 2 tables stale"
    assert message.text.splitlines() == [
        "pg_to_bq · shop: 2 tables in bigquery/raw are stale: not loaded as often as "
        "their freshness policy expects.",
        "",
        "• customers: never loaded https://ui/assets/bigquery/raw/customers",
        "• orders: last loaded 2026-12-04 10:00 UTC (26 h ago) https://ui/assets/bigquery/raw/orders",
    ]
    many = stale_message([StaleTable(table(f"t{i}")) for i in range(21)], database="shop",
                         ui_url="https://ui", now=now)
    assert many is not None and "https://ui/assets/bigquery" not in many.text
    assert many.text.endswith("Assets: https://ui/assets")
    assert stale_message([], database="shop") is None
