"""The BigQuery emulator harness is trustworthy: failures fail, data round-trips exactly.

Everything here goes through BigQuery's public REST API (the real
google-cloud-bigquery client, dlt's real ``bigquery`` destination, or plain HTTP)
against the emulator subprocess started once per session.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
import pytest
from dlt.destinations.adapters import bigquery_adapter
from google.api_core import exceptions as gexc
from google.cloud import bigquery
from google.cloud.bigquery import dbapi

from pg_to_bq_tests.support.bigquery_emulator import (
    EMULATOR_HOST_ENV,
    BigQueryEmulator,
)

pytestmark = pytest.mark.bigquery

UTC = dt.UTC


@pytest.fixture
def bq(bigquery_emulator: BigQueryEmulator) -> bigquery.Client:
    return bigquery_emulator.client()


@pytest.fixture
def dataset(bq: bigquery.Client) -> str:
    """A fresh, empty dataset with one small table ``t`` (id INT64, name STRING)."""
    name = f"ds_{uuid.uuid4().hex[:8]}"
    bq.create_dataset(name)
    bq.query_and_wait(
        f"CREATE TABLE `{bq.project}.{name}.t` (id INT64, name STRING);"
        f"INSERT INTO `{bq.project}.{name}.t` VALUES (1, 'a'), (2, 'b'), (3, 'c')"
    )
    return name


def _pipeline(
    emulator: BigQueryEmulator, tmp_path: Path, destination: Any = None, name: str | None = None
) -> dlt.Pipeline:
    name = name or f"p_{uuid.uuid4().hex[:8]}"
    return dlt.pipeline(
        pipeline_name=name,
        destination=destination or emulator.dlt_destination(),
        dataset_name=f"{name}_data",
        pipelines_dir=str(tmp_path / f"pipelines_{uuid.uuid4().hex[:6]}"),
    )


def _rows(bq: bigquery.Client, sql: str) -> list[dict[str, Any]]:
    return [dict(row.items()) for row in bq.query_and_wait(sql)]


def _http(url: str, data: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


# ---------------------------------------------------------------------------
# the process and the HTTP surface
# ---------------------------------------------------------------------------


def test_emulator_is_a_real_http_server_on_loopback(bigquery_emulator: BigQueryEmulator) -> None:
    assert bigquery_emulator.base_url.startswith("http://127.0.0.1:")
    assert bigquery_emulator.env() == {EMULATOR_HOST_ENV: bigquery_emulator.base_url}
    status, body = _http(
        f"{bigquery_emulator.base_url}/bigquery/v2/projects/{bigquery_emulator.project_id}/datasets"
    )
    assert status == 200 and body.get("kind") == "bigquery#datasetList"


def test_service_account_key_works_offline(bigquery_emulator: BigQueryEmulator, tmp_path: Path) -> None:
    info = bigquery_emulator.service_account_info()
    credentials = bigquery_emulator.service_account_credentials(info)
    client = bigquery_emulator.client(credentials=credentials)
    assert [tuple(r) for r in client.query_and_wait("SELECT 1 AS one")] == [(1,)]
    # the token came from the emulator's token endpoint (the JWT-bearer exchange ran)
    assert client._credentials.token == f"bqemulator-token-for-{info['client_email']}"

    # dlt takes the key as JSON text and keeps its token_uri
    destination = bigquery_emulator.dlt_destination(credentials=json.dumps(info))
    pipeline = _pipeline(bigquery_emulator, tmp_path, destination=destination)
    pipeline.run([{"id": 1}], table_name="one")
    rows = client.query_and_wait(f"SELECT id FROM `{pipeline.dataset_name}.one`")
    assert [r["id"] for r in rows] == [1]


def test_dlt_env_configures_destination_bigquery(
    bigquery_emulator: BigQueryEmulator,
    bq: bigquery.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in bigquery_emulator.dlt_env().items():
        monkeypatch.setenv(key, value)
    name = f"env_{uuid.uuid4().hex[:8]}"
    pipeline = dlt.pipeline(
        pipeline_name=name,
        destination="bigquery",
        dataset_name=name,
        pipelines_dir=str(tmp_path / "pipelines"),
    )
    pipeline.run([{"id": 7}], table_name="configured")
    assert _rows(bq, f"SELECT id FROM `{bq.project}.{name}.configured`") == [{"id": 7}]


def test_token_endpoint_rejects_a_malformed_assertion(
    bigquery_emulator: BigQueryEmulator,
) -> None:
    body = b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=nope"
    request = urllib.request.Request(
        bigquery_emulator.token_uri,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 400


# ---------------------------------------------------------------------------
# a failing query fails the caller
# ---------------------------------------------------------------------------

RUNNERS = {
    # jobs.query: what dlt's SQL client (DB-API) and query_and_wait use
    "jobs.query": lambda bq, sql, cfg=None: list(bq.query_and_wait(sql, job_config=cfg)),
    # jobs.insert + polling
    "jobs.insert": lambda bq, sql, cfg=None: list(bq.query(sql, job_config=cfg).result()),
    "dbapi": lambda bq, sql, cfg=None: _dbapi_fetch(bq, sql, cfg),
}


def _dbapi_fetch(bq: bigquery.Client, sql: str, cfg: Any = None) -> list[Any]:
    cursor = dbapi.connect(client=bq).cursor()
    cursor.execute(sql, job_config=cfg)
    return cursor.fetchall()


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_syntax_error_raises(bq: bigquery.Client, runner: str) -> None:
    expected = dbapi.DatabaseError if runner == "dbapi" else gexc.BadRequest
    with pytest.raises(expected, match="(?i)syntax"):
        RUNNERS[runner](bq, "SELEC 1")


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_missing_table_raises(bq: bigquery.Client, dataset: str, runner: str) -> None:
    expected = dbapi.DatabaseError if runner == "dbapi" else gexc.NotFound
    with pytest.raises(expected, match="missing_table"):
        RUNNERS[runner](bq, f"SELECT * FROM `{bq.project}.{dataset}.missing_table`")


def test_missing_column_raises(bq: bigquery.Client, dataset: str) -> None:
    with pytest.raises(gexc.BadRequest, match="no_such_column"):
        bq.query_and_wait(f"SELECT no_such_column FROM `{bq.project}.{dataset}.t`")


def test_failing_statement_inside_a_script_raises(bq: bigquery.Client, dataset: str) -> None:
    script = (
        f"INSERT INTO `{bq.project}.{dataset}.t` VALUES (10, 'x');\n"
        f"SELECT * FROM `{bq.project}.{dataset}.missing_table`;"
    )
    with pytest.raises(gexc.GoogleAPICallError):
        bq.query_and_wait(script)


def test_unsupported_feature_fails_fast_without_network(bq: bigquery.Client) -> None:
    # GEOGRAPHY needs DuckDB's spatial extension, which the offline emulator does not
    # download: the query must fail quickly (no download attempt, no client retry loop).
    started = time.monotonic()
    with pytest.raises(gexc.GoogleAPICallError):
        bq.query_and_wait("SELECT ST_GEOGPOINT(1.0, 2.0) AS p")
    assert time.monotonic() - started < 10


def test_dlt_sql_client_raises_on_failed_query(bigquery_emulator: BigQueryEmulator, tmp_path: Path) -> None:
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    pipeline = _pipeline(bigquery_emulator, tmp_path)
    pipeline.run([{"id": 1}], table_name="one")
    with pipeline.sql_client() as client:
        assert [tuple(r) for r in client.execute_sql("SELECT COUNT(*) FROM one")] == [(1,)]
        with pytest.raises(DatabaseUndefinedRelation):
            client.execute_sql("SELECT * FROM missing_table")
        with pytest.raises(Exception, match="(?i)syntax"):
            client.execute_sql("SELEC 1")


def test_failed_job_results_report_the_error(
    bigquery_emulator: BigQueryEmulator, bq: bigquery.Client
) -> None:
    job = bq.query("SELEC 1")  # jobs.insert answers 200 with the error in the job status
    with pytest.raises(gexc.BadRequest):
        job.result()
    status, body = _http(
        f"{bigquery_emulator.base_url}/bigquery/v2/projects/{bq.project}/queries/{job.job_id}"
    )
    assert status == 400
    assert body["error"]["errors"][0]["reason"] == "invalidQuery"


# ---------------------------------------------------------------------------
# query semantics the client relies on
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_default_dataset_is_honored(bq: bigquery.Client, dataset: str, runner: str) -> None:
    cfg = bigquery.QueryJobConfig(default_dataset=f"{bq.project}.{dataset}")
    rows = RUNNERS[runner](bq, "SELECT COUNT(*) AS n, MAX(name) AS m FROM t", cfg)
    assert [tuple(r.values()) for r in rows] == [(3, "c")]


def test_default_dataset_keeps_parameters_and_information_schema(bq: bigquery.Client, dataset: str) -> None:
    # the shape of dlt's schema query: positional parameters + INFORMATION_SCHEMA,
    # sent with a default dataset
    cfg = bigquery.QueryJobConfig(default_dataset=f"{bq.project}.{dataset}")
    cursor = dbapi.connect(client=bq).cursor()
    cursor.execute(
        f"SELECT table_name, column_name, data_type FROM `{bq.project}`.`{dataset}`"
        ".INFORMATION_SCHEMA.COLUMNS WHERE table_name IN (%s,%s) "
        "ORDER BY table_name, ordinal_position",
        ("t", "nope"),
        job_config=cfg,
    )
    assert [tuple(r) for r in cursor.fetchall()] == [("t", "id", "INT64"), ("t", "name", "STRING")]


def test_results_are_paged_completely(
    bigquery_emulator: BigQueryEmulator, bq: bigquery.Client, dataset: str
) -> None:
    bq.query_and_wait(
        f"CREATE TABLE `{bq.project}.{dataset}.many` AS "
        "SELECT x AS n FROM UNNEST(GENERATE_ARRAY(1, 2500)) AS x"
    )
    sql = f"SELECT n FROM `{bq.project}.{dataset}.many`"
    expected = sum(range(1, 2501))
    assert sum(r["n"] for r in bq.query_and_wait(sql)) == expected
    assert sum(r["n"] for r in bq.query_and_wait(sql, page_size=1000)) == expected
    assert sum(r["n"] for r in bq.query(sql).result(page_size=700)) == expected
    assert bq.query(sql).to_arrow(create_bqstorage_client=False).num_rows == 2500
    # the client's "wait for the job" probe must not look like a (empty) first page
    job = bq.query(sql)
    job.result()
    status, body = _http(
        f"{bigquery_emulator.base_url}/bigquery/v2/projects/{bq.project}/queries/{job.job_id}?maxResults=0"
    )
    assert status == 200 and body["totalRows"] == "2500"
    assert "rows" not in body and "pageToken" not in body


def test_alter_table_adds_several_columns_and_metadata_follows(bq: bigquery.Client, dataset: str) -> None:
    # dlt's schema evolution: one ALTER with several ADD COLUMN clauses
    bq.query_and_wait(
        f"ALTER TABLE `{bq.project}`.`{dataset}`.`t`\n"
        "ADD COLUMN `j` JSON OPTIONS (description='a json column'),\nADD COLUMN `k` INT64  ;"
    )
    table = bq.get_table(f"{bq.project}.{dataset}.t")
    assert [(f.name, f.field_type) for f in table.schema] == [
        ("id", "INTEGER"),
        ("name", "STRING"),
        ("j", "JSON"),
        ("k", "INTEGER"),
    ]
    assert table.schema[2].description == "a json column"
    info = _rows(
        bq,
        f"SELECT column_name, data_type FROM `{bq.project}.{dataset}.INFORMATION_SCHEMA.COLUMNS`"
        " WHERE table_name = 't' ORDER BY ordinal_position",
    )
    assert [(r["column_name"], r["data_type"]) for r in info][2:] == [("j", "JSON"), ("k", "INT64")]


# ---------------------------------------------------------------------------
# load jobs through the google client
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain"])
def test_jsonl_load_job_reads_gzip_and_decodes_bytes(
    bq: bigquery.Client, dataset: str, compressed: bool
) -> None:
    blobs = [b"\x00\x01\xfe\xff", b"", b"plain text", None]
    lines = [
        json.dumps(
            {
                "id": i,
                "raw": None if blob is None else base64.b64encode(blob).decode(),
                "doc": {"i": i, "list": [1, "two"]},
            }
        )
        for i, blob in enumerate(blobs)
    ]
    payload = ("\n".join(lines) + "\n").encode()
    if compressed:
        payload = gzip.compress(payload)
    table_id = f"{bq.project}.{dataset}.loaded"
    bq.create_table(
        bigquery.Table(
            table_id,
            schema=[
                bigquery.SchemaField("id", "INT64", mode="REQUIRED"),
                bigquery.SchemaField("raw", "BYTES"),
                bigquery.SchemaField("doc", "JSON"),
            ],
        )
    )
    job_id = f"load_{uuid.uuid4().hex[:10]}"
    job = bq.load_table_from_file(
        io.BytesIO(payload),
        table_id,
        job_id=job_id,
        job_config=bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
        ),
    )
    job.result()
    # the job keeps the id the client chose (dlt looks load jobs up by it)
    assert job.job_id == job_id
    assert bq.get_job(job_id).state == "DONE"
    rows = _rows(bq, f"SELECT id, raw, doc FROM `{table_id}` ORDER BY id")
    assert [r["raw"] for r in rows] == blobs
    assert [r["doc"] for r in rows] == [{"i": i, "list": [1, "two"]} for i in range(len(blobs))]


def test_parquet_load_job_matches_columns_by_name(bq: bigquery.Client, dataset: str) -> None:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    # columns in the opposite order of the table's (id INT64, name STRING)
    pq.write_table(pa.table({"name": ["x", "y"], "id": pa.array([10, 11], pa.int64())}), buffer)
    buffer.seek(0)
    bq.load_table_from_file(
        buffer,
        f"{bq.project}.{dataset}.t",
        job_config=bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET),
    ).result()
    rows = _rows(bq, f"SELECT id, name FROM `{bq.project}.{dataset}.t` WHERE id >= 10 ORDER BY id")
    assert rows == [{"id": 10, "name": "x"}, {"id": 11, "name": "y"}]


def test_failed_load_job_raises(bq: bigquery.Client, dataset: str) -> None:
    job = bq.load_table_from_file(
        io.BytesIO(b'{"id": "not a number"}\n'),
        f"{bq.project}.{dataset}.t",
        job_config=bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
        ),
    )
    with pytest.raises(gexc.GoogleAPICallError):
        job.result()


# ---------------------------------------------------------------------------
# dlt's real BigQuery destination
# ---------------------------------------------------------------------------

TEXTS = ["plain", "日本語 ✓ 'quotes' \"double\"\nnewline", "", None]
ARROW_ROWS = {
    "id": pa.array([1, 2, 2**62 + 7, -5], pa.int64()),
    "name": pa.array(TEXTS, pa.string()),
    "amount": pa.array(
        [Decimal("12345678901.123456789"), Decimal("-0.000000001"), Decimal("0"), None],
        pa.decimal128(20, 9),
    ),
    "ts": pa.array(
        [
            dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
            dt.datetime(1969, 12, 31, 23, 59, 59, 123456, tzinfo=UTC),
            dt.datetime(2000, 1, 1, tzinfo=UTC),
            None,
        ],
        pa.timestamp("us", tz="UTC"),
    ),
    "naive": pa.array(
        [
            dt.datetime(2024, 1, 2, 3, 4, 5, 654321),
            dt.datetime(1999, 12, 31),
            None,
            dt.datetime(2038, 1, 19, 3, 14, 8),
        ],
        pa.timestamp("us"),
    ),
    "day": pa.array([dt.date(2024, 2, 29), dt.date(1970, 1, 1), dt.date(9999, 12, 31), None]),
    "flag": pa.array([True, False, None, True]),
    "raw": pa.array([b"\x00\x01\xff", b"", None, b"hello"], pa.binary()),
    "doc": pa.array(['{"k": [1, 2], "s": "x"}', "[1, 2.5, null]", None, "{}"], pa.string()),
}


def _arrow_table() -> pa.Table:
    return pa.table(ARROW_ROWS)


@pytest.mark.parametrize("file_format", ["parquet", "jsonl"])
def test_dlt_loads_arrow_types_exactly(
    bigquery_emulator: BigQueryEmulator, bq: bigquery.Client, tmp_path: Path, file_format: str
) -> None:
    # JSON: BigQuery (and so dlt) cannot load JSON-typed columns from Parquet; with
    # Parquet the JSON text goes to a STRING column (lossless text), with JSONL to a
    # JSON column (the Arrow text becomes a JSON string value -- see the JSON tests).
    doc_type = "json" if file_format == "jsonl" else "text"

    @dlt.resource(name="items", primary_key="id", columns={"doc": {"data_type": doc_type}})
    def items() -> Iterator[pa.Table]:
        yield _arrow_table()

    pipeline = _pipeline(bigquery_emulator, tmp_path)
    info = pipeline.run(items(), loader_file_format=file_format, write_disposition="replace")
    formats = {
        job.job_file_info.file_format
        for package in info.load_packages
        for job in package.jobs["completed_jobs"]
        if job.job_file_info.table_name == "items"
    }
    assert formats == {file_format}

    table = bq.get_table(f"{bq.project}.{pipeline.dataset_name}.items")
    types = {f.name: f.field_type for f in table.schema}
    assert types == {
        "id": "INTEGER",
        "name": "STRING",
        "amount": "NUMERIC",
        "ts": "TIMESTAMP",
        # dlt declares no naive timestamps on BigQuery: DATETIME does not load from parquet
        "naive": "TIMESTAMP",
        "day": "DATE",
        "flag": "BOOLEAN",
        "raw": "BYTES",
        "doc": "JSON" if file_format == "jsonl" else "STRING",
    }
    assert table.num_rows == 4

    got = _rows(bq, f"SELECT * FROM `{bq.project}.{pipeline.dataset_name}.items`")
    by_id = {row["id"]: row for row in got}
    assert sorted(by_id) == sorted(ARROW_ROWS["id"].to_pylist())
    source = _arrow_table().to_pylist()
    for expected in source:
        row = by_id[expected["id"]]
        for column, value in expected.items():
            if column == "naive" and value is not None:
                value = value.replace(tzinfo=UTC)  # loaded as TIMESTAMP, i.e. read as UTC
            assert row[column] == value, (file_format, expected["id"], column)
            assert type(row[column]) is type(value), (file_format, expected["id"], column)


@pytest.mark.parametrize(
    "replace_strategy", ["truncate-and-insert", "insert-from-staging", "staging-optimized"]
)
def test_dlt_replace_twice_leaves_no_duplicates(
    bigquery_emulator: BigQueryEmulator, bq: bigquery.Client, tmp_path: Path, replace_strategy: str
) -> None:
    pipeline = _pipeline(
        bigquery_emulator,
        tmp_path,
        destination=bigquery_emulator.dlt_destination(replace_strategy=replace_strategy),
    )
    for ids in ([1, 2, 3], [2, 3, 4, 5]):
        table = pa.table({"id": pa.array(ids, pa.int64()), "v": pa.array([f"v{i}" for i in ids])})
        pipeline.run(table, table_name="items", write_disposition="replace", loader_file_format="parquet")
        rows = _rows(bq, f"SELECT id, v FROM `{bq.project}.{pipeline.dataset_name}.items` ORDER BY id")
        assert [(r["id"], r["v"]) for r in rows] == [(i, f"v{i}") for i in ids]


@pytest.mark.parametrize("strategy", ["delete-insert", "upsert"])
@pytest.mark.parametrize("file_format", ["parquet", "jsonl"])
def test_dlt_merge_updates_and_inserts_by_primary_key(
    bigquery_emulator: BigQueryEmulator,
    bq: bigquery.Client,
    tmp_path: Path,
    strategy: str,
    file_format: str,
) -> None:
    pipeline = _pipeline(bigquery_emulator, tmp_path)

    def run(rows: list[tuple[int, str, Decimal]]) -> None:
        table = pa.table(
            {
                "id": pa.array([r[0] for r in rows], pa.int64()),
                "name": pa.array([r[1] for r in rows]),
                "amount": pa.array([r[2] for r in rows], pa.decimal128(10, 2)),
            }
        )

        @dlt.resource(
            name="accounts",
            primary_key="id",
            write_disposition={"disposition": "merge", "strategy": strategy},
        )
        def accounts() -> Iterator[pa.Table]:
            yield table

        pipeline.run(accounts(), loader_file_format=file_format)

    run([(1, "one", Decimal("1.10")), (2, "two", Decimal("2.20")), (3, "three", Decimal("3.30"))])
    run([(2, "TWO", Decimal("22.00")), (4, "four", Decimal("4.40"))])
    rows = _rows(
        bq,
        f"SELECT id, name, amount FROM `{bq.project}.{pipeline.dataset_name}.accounts` ORDER BY id",
    )
    assert [(r["id"], r["name"], r["amount"]) for r in rows] == [
        (1, "one", Decimal("1.10")),
        (2, "TWO", Decimal("22.00")),
        (3, "three", Decimal("3.30")),
        (4, "four", Decimal("4.40")),
    ]


def test_dlt_schema_evolution_adds_columns(
    bigquery_emulator: BigQueryEmulator, bq: bigquery.Client, tmp_path: Path
) -> None:
    pipeline = _pipeline(bigquery_emulator, tmp_path)
    pipeline.run([{"id": 1, "a": "x"}], table_name="evolving", loader_file_format="parquet")
    # two new columns at once -> one ALTER TABLE with two ADD COLUMN clauses
    pipeline.run(
        [{"id": 2, "a": "y", "b": 2.5, "c": True}],
        table_name="evolving",
        loader_file_format="parquet",
    )
    rows = _rows(bq, f"SELECT id, a, b, c FROM `{bq.project}.{pipeline.dataset_name}.evolving` ORDER BY id")
    assert [tuple(r.values()) for r in rows] == [(1, "x", None, None), (2, "y", 2.5, True)]
    names = [f.name for f in bq.get_table(f"{bq.project}.{pipeline.dataset_name}.evolving").schema]
    assert {"b", "c"} <= set(names)
    # a third run sees the destination schema as up to date (no duplicate ALTER)
    pipeline.run([{"id": 3, "a": "z", "b": 1.0, "c": False}], table_name="evolving")
    assert _rows(bq, f"SELECT COUNT(*) AS n FROM `{bq.project}.{pipeline.dataset_name}.evolving`") == [
        {"n": 3}
    ]


@pytest.mark.parametrize("restore_via", ["sync_destination", "run"])
def test_dlt_state_is_restored_into_an_empty_pipelines_dir(
    bigquery_emulator: BigQueryEmulator, tmp_path: Path, restore_via: str
) -> None:
    name = f"state_{uuid.uuid4().hex[:8]}"

    @dlt.source(name="src")
    def source(marker: str) -> Any:
        @dlt.resource(name="rows", write_disposition="append")
        def rows() -> Iterator[dict[str, Any]]:
            state = dlt.current.resource_state()
            state["runs"] = state.get("runs", 0) + 1
            state["marker"] = marker
            yield {"id": state["runs"]}

        return rows

    first = _pipeline(bigquery_emulator, tmp_path / "first", name=name)
    first.run(source("first-run"), loader_file_format="parquet")
    assert first.state["sources"]["src"]["resources"]["rows"] == {"runs": 1, "marker": "first-run"}

    fresh = _pipeline(bigquery_emulator, tmp_path / "fresh", name=name)
    assert "sources" not in fresh.state
    if restore_via == "sync_destination":
        fresh.sync_destination()
        assert fresh.state["sources"]["src"]["resources"]["rows"] == {
            "runs": 1,
            "marker": "first-run",
        }
    else:
        fresh.run(source("second-run"), loader_file_format="parquet")
        # restored before extraction: the counter continues from the destination's state
        assert fresh.state["sources"]["src"]["resources"]["rows"] == {
            "runs": 2,
            "marker": "second-run",
        }


# ---------------------------------------------------------------------------
# JSON columns and table metadata (findings documented in the harness report)
# ---------------------------------------------------------------------------


def test_dlt_refuses_json_columns_from_parquet(bigquery_emulator: BigQueryEmulator, tmp_path: Path) -> None:
    from dlt.pipeline.exceptions import PipelineStepFailed

    pipeline = _pipeline(bigquery_emulator, tmp_path)
    with pytest.raises(PipelineStepFailed, match="cannot load `data_type=json` from `file_format=parquet`"):
        pipeline.run(
            _arrow_table(),
            table_name="items",
            columns={"doc": {"data_type": "json"}},
            loader_file_format="parquet",
        )


def test_json_tables_load_as_jsonl_while_the_rest_loads_as_parquet(
    bigquery_emulator: BigQueryEmulator, bq: bigquery.Client, tmp_path: Path
) -> None:
    # Parquet by default (a destination capability), JSONL only for the table with a
    # JSON column (a table hint). Passing loader_file_format= to run() would override
    # every table's hint, so it is not passed.
    docs = ['{"k": [1, 2], "s": "x"}', "[1, 2.5, null]", None]

    @dlt.resource(name="with_json", columns={"doc": {"data_type": "json"}}, file_format="jsonl")
    def with_json() -> Iterator[list[dict[str, Any]]]:
        # JSON parsed into Python values -> JSON objects/arrays in BigQuery
        yield [{"id": i, "doc": None if d is None else json.loads(d)} for i, d in enumerate(docs)]

    @dlt.resource(name="json_text", columns={"doc": {"data_type": "json"}}, file_format="jsonl")
    def json_text() -> Iterator[pa.Table]:
        # JSON *text* in Arrow -> BigQuery keeps the raw JSON value, i.e. a JSON string
        yield pa.table({"id": pa.array([0, 1, 2], pa.int64()), "doc": pa.array(docs)})

    @dlt.resource(name="plain")
    def plain() -> Iterator[pa.Table]:
        yield pa.table({"id": pa.array([1, 2], pa.int64()), "doc": pa.array(docs[:2])})

    destination = bigquery_emulator.dlt_destination(preferred_loader_file_format="parquet")
    pipeline = _pipeline(bigquery_emulator, tmp_path, destination=destination)
    info = pipeline.run([with_json(), json_text(), plain()])
    formats = {
        (job.job_file_info.table_name, job.job_file_info.file_format)
        for package in info.load_packages
        for job in package.jobs["completed_jobs"]
        if not job.job_file_info.table_name.startswith("_dlt")
    }
    assert formats == {("with_json", "jsonl"), ("json_text", "jsonl"), ("plain", "parquet")}

    ds = f"{bq.project}.{pipeline.dataset_name}"
    assert {f.name: f.field_type for f in bq.get_table(f"{ds}.with_json").schema}["doc"] == "JSON"
    assert {f.name: f.field_type for f in bq.get_table(f"{ds}.plain").schema}["doc"] == "STRING"
    parsed = _rows(bq, f"SELECT id, doc, JSON_QUERY(doc, '$.k') AS k FROM `{ds}.with_json` ORDER BY id")
    assert [r["doc"] for r in parsed] == [{"k": [1, 2], "s": "x"}, [1, 2.5, None], None]
    assert parsed[0]["k"] is not None
    text = _rows(bq, f"SELECT id, doc, JSON_QUERY(doc, '$.k') AS k FROM `{ds}.json_text` ORDER BY id")
    assert [r["doc"] for r in text] == docs  # JSON string values holding the text
    assert text[0]["k"] is None  # ... so JSON paths do not reach into them
    plain_rows = _rows(bq, f"SELECT doc FROM `{ds}.plain` ORDER BY id")
    assert [r["doc"] for r in plain_rows] == docs[:2]


def test_autodetect_schema_loads_parquet_json_text_as_string(
    bigquery_emulator: BigQueryEmulator, bq: bigquery.Client, tmp_path: Path
) -> None:
    @dlt.resource(name="items", columns={"doc": {"data_type": "json"}})
    def items() -> Iterator[pa.Table]:
        yield _arrow_table()

    pipeline = _pipeline(bigquery_emulator, tmp_path)
    pipeline.run(bigquery_adapter(items(), autodetect_schema=True), loader_file_format="parquet")
    ds = f"{bq.project}.{pipeline.dataset_name}"
    assert {f.name: f.field_type for f in bq.get_table(f"{ds}.items").schema}["doc"] == "STRING"
    rows = _rows(bq, f"SELECT id, doc FROM `{ds}.items`")
    assert {r["id"]: r["doc"] for r in rows} == dict(
        zip(ARROW_ROWS["id"].to_pylist(), ARROW_ROWS["doc"].to_pylist(), strict=True)
    )
    # the table grows new columns on later loads (ALLOW_FIELD_ADDITION)
    pipeline.run(
        bigquery_adapter(dlt.resource([{"id": 99, "extra": "new"}], name="items"), autodetect_schema=True),
        loader_file_format="parquet",
    )
    assert _rows(bq, f"SELECT extra FROM `{ds}.items` WHERE id = 99") == [{"extra": "new"}]


@pytest.mark.parametrize("file_format", ["parquet", "jsonl"])
def test_table_and_column_hints_reach_table_metadata(
    bigquery_emulator: BigQueryEmulator, bq: bigquery.Client, tmp_path: Path, file_format: str
) -> None:
    @dlt.resource(
        name="events",
        columns={"id": {"description": "primary key"}, "name": {"description": "a name"}},
    )
    def events() -> Iterator[pa.Table]:
        yield pa.table(
            {
                "id": pa.array([1, 2], pa.int64()),
                "day": pa.array([dt.date(2024, 1, 1), dt.date(2024, 1, 2)]),
                "name": pa.array(["a", "b"]),
            }
        )

    resource = bigquery_adapter(events(), table_description="events table", partition="day", cluster=["id"])
    pipeline = _pipeline(bigquery_emulator, tmp_path)
    pipeline.run(resource, loader_file_format=file_format)
    table = bq.get_table(f"{bq.project}.{pipeline.dataset_name}.events")
    assert table.description == "events table"
    descriptions = {f.name: f.description for f in table.schema}
    assert descriptions["id"] == "primary key" and descriptions["name"] == "a name"
    assert table.time_partitioning is not None and table.time_partitioning.field == "day"
    assert table.clustering_fields == ["id"]
    assert table.num_rows == 2
