"""What analysts see in the Dagster UI, end to end: `pg-to-bq demo` → GraphQL → Chromium.

One demo stack serves the whole module (it takes 20-70 s to start): the tests check the
asset graph through the webserver's GraphQL API, materialize one table through it, look at
the asset graph and at that table's page in headless Chromium (saving screenshots), and
finally stop the demo with Ctrl-C and check that nothing of it keeps running. They run in
file order; the last one stops the stack.

Screenshots land in this test's temporary directory; with PG_TO_BQ_UPDATE_SCREENSHOTS=1 the
README's copies in docs/screenshots/ are replaced too (`scripts/screenshots.py` makes the
same pictures without the assertions).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from pg_to_bq.orchestration.names import key_part
from pg_to_bq.planning.naming import destination_name
from pg_to_bq_tests.browser.demo_stack import (
    ASSET_NODES_QUERY,
    FRESHNESS_QUERY,
    LATEST_MATERIALIZATION_QUERY,
    RUN_EVENTS_QUERY,
    DemoStack,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

REPO_ROOT = Path(__file__).resolve().parents[2]
UPDATE_SCREENSHOTS = os.environ.get("PG_TO_BQ_UPDATE_SCREENSHOTS") == "1"

# The tables of pg_to_bq/postgres/sample_data.sql; page_views' monthly partitions are not tables of
# their own for the loader, and must not show up as assets.
SAMPLE_TABLES = ("audit_log", "customers", "order_items", "orders", "page_views", "products",
                 "顧客メモ")
SCHEMA, DATASET = "public", "shop_raw"
TABLE = "orders"
TABLE_COLUMNS = ("customer_id", "ordered_at", "total")  # a sanity floor under the schema


def source_key(table: str) -> tuple[str, ...]:
    return ("postgres", SCHEMA, key_part(table))


def loaded_key(table: str) -> tuple[str, ...]:
    return ("duckdb", DATASET, key_part(destination_name(table)))


def _load_screenshots_module() -> ModuleType:
    path = REPO_ROOT / "scripts" / "screenshots.py"
    spec = importlib.util.spec_from_file_location("pg_to_bq_screenshots", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


screenshots = _load_screenshots_module()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    # Not under pytest's temporary root: every pytest session that starts meanwhile (another
    # test run on the machine) resets /tmp/pytest-of-<user> to mode 0700, after which the
    # unprivileged PostgreSQL user can no longer reach the data directory, and `pg_ctl stop`
    # fails (the demo still says it stopped PostgreSQL).
    work = Path(tempfile.mkdtemp(prefix="pg_to_bq_ui_"))
    stack = DemoStack.start(work / "demo")
    try:
        yield stack
    finally:
        stack.stop()  # a no-op after test_ctrl_c_stops_everything, a cleanup otherwise
        shutil.copyfile(stack.log_path, tmp_path_factory.mktemp("demo_log") / "demo.log")
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def asset_nodes(stack: DemoStack) -> dict[tuple[str, ...], dict[str, Any]]:
    nodes = stack.graphql(ASSET_NODES_QUERY)["assetNodes"]
    return {tuple(n["assetKey"]["path"]): n for n in nodes}


@pytest.fixture(scope="module")
def table_run(stack: DemoStack) -> dict[str, Any]:
    """One run materializing only the `orders` table, launched through GraphQL, finished."""
    run_id = stack.launch_materialization(loaded_key(TABLE))
    run = stack.wait_for_run(run_id)
    if run["status"] != "SUCCESS":
        pytest.fail(f"run {run_id} ended {run['status']}:\n{stack.run_errors(run_id)}")
    return run


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with screenshots.chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def save_screenshot(page: Page, shots_dir: Path, name: str, for_readme: bool) -> Path:
    path = screenshots.screenshot(page, shots_dir / name)
    assert path.stat().st_size > 20_000, f"{path} looks empty"
    if for_readme and UPDATE_SCREENSHOTS:
        screenshots.DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, screenshots.DOCS_SCREENSHOTS / name)
    return path


def column_names(node: dict[str, Any]) -> list[str]:
    for entry in node["metadataEntries"]:
        if entry["label"] == "dagster/column_schema":
            return [c["name"] for c in entry["schema"]["columns"]]
    raise AssertionError(f"{node['assetKey']['path']} has no dagster/column_schema")


def metadata_text(node: dict[str, Any], label: str) -> str | None:
    return next((e.get("text") for e in node["metadataEntries"] if e["label"] == label), None)


def in_viewport(page: Page, locator: Locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    assert size is not None
    return (box is not None and box["x"] >= 0 and box["y"] >= 0
            and box["x"] + box["width"] <= size["width"]
            and box["y"] + box["height"] <= size["height"])


def expect_visible_texts(page: Page, texts: Sequence[str]) -> None:
    for text in texts:
        expect(page.get_by_text(text, exact=True).first).to_be_visible()


def test_asset_graph_has_one_asset_per_table(asset_nodes: dict) -> None:
    expected = {source_key(t) for t in SAMPLE_TABLES} | {loaded_key(t) for t in SAMPLE_TABLES}
    assert set(asset_nodes) == expected | {("postgres", "catalog")}

    for table in SAMPLE_TABLES:
        source, loaded = asset_nodes[source_key(table)], asset_nodes[loaded_key(table)]
        assert not source["isExecutable"] and source["dependencyKeys"] == []
        assert source["kinds"] == ["postgres"]
        assert metadata_text(source, "dagster/table_name") == f"{SCHEMA}.{table}"

        assert loaded["isMaterializable"]
        assert [tuple(d["path"]) for d in loaded["dependencyKeys"]] == [source_key(table)]
        # The small tables share one step (a subsettable multi-asset).
        assert loaded["opNames"] == ["load_tables"]
        assert "mirror_all_tables" in loaded["jobNames"]
        assert set(loaded["kinds"]) == {"dlt", "duckdb"}
        assert metadata_text(loaded, "pg_to_bq/source_table") == f"{SCHEMA}.{table}"

        # Told apart in the sidebar and the asset list: a source is in its schema's
        # `postgres_` group, the loaded table in its schema's group.
        assert loaded["groupName"] == SCHEMA and source["groupName"] == f"postgres_{SCHEMA}"
        for node in (source, loaded):
            assert node["description"], f"{node['assetKey']['path']} has no description"
            assert column_names(node), f"{node['assetKey']['path']} has no columns"
    assert set(TABLE_COLUMNS) <= set(column_names(asset_nodes[loaded_key(TABLE)]))


def test_single_table_materialization(stack: DemoStack, table_run: dict) -> None:
    key = loaded_key(TABLE)
    assert table_run["stepKeysToExecute"] == ["load_tables"]
    assert [tuple(k["path"]) for k in table_run["assetSelection"]] == [key]

    events = stack.graphql(RUN_EVENTS_QUERY, {"runId": table_run["runId"]})["logsForRun"]
    materialized = [tuple(e["assetKey"]["path"]) for e in events["events"]
                    if e["__typename"] == "MaterializationEvent"]
    assert materialized == [key]
    checks = {e["evaluation"]["checkName"]: e["evaluation"]["success"] for e in events["events"]
              if e["__typename"] == "AssetCheckEvaluationEvent"}
    assert checks and all(checks.values()), checks

    node = stack.graphql(LATEST_MATERIALIZATION_QUERY, {"assetKey": {"path": list(key)}})
    latest = node["assetNodeOrError"]["assetMaterializations"][0]
    assert latest["runId"] == table_run["runId"]
    metadata = {e["label"]: e for e in latest["metadataEntries"]}
    rows = int(metadata["dagster/row_count"]["intRepr"])
    assert rows > 0 and rows == int(metadata["rows_loaded"]["intRepr"])


def test_asset_graph_in_browser(stack: DemoStack, table_run: dict, browser: Browser,
                                shots_dir: Path) -> None:
    with screenshots.new_page(browser, screenshots.GRAPH_VIEWPORT) as page:
        screenshots.show_asset_graph(page, stack.url)
        for table in SAMPLE_TABLES:
            # A source node and a loaded-table node, both labelled with the key's last part.
            nodes = page.get_by_text(key_part(table), exact=True)
            expect(nodes).to_have_count(2)
            for node in nodes.all():
                expect(node).to_be_visible()
                assert in_viewport(page, node), f"{table} is outside the screenshot"
        expect(page.get_by_text("Materialized", exact=True)).to_have_count(1)
        expect(page.get_by_text("Postgres", exact=True)).to_have_count(len(SAMPLE_TABLES) + 1)
        save_screenshot(page, shots_dir, screenshots.GRAPH_FILE, for_readme=True)


def test_asset_page_in_browser(stack: DemoStack, table_run: dict, asset_nodes: dict,
                               browser: Browser, shots_dir: Path) -> None:
    node = asset_nodes[loaded_key(TABLE)]
    with screenshots.new_page(browser, screenshots.ASSET_PAGE_VIEWPORT) as page:
        screenshots.show_asset_page(page, stack.url, loaded_key(TABLE))
        expect_visible_texts(page, [TABLE, node["description"].split("\n\n")[0], *column_names(node)])
        expect_visible_texts(page, TABLE_COLUMNS)
        expect(page.get_by_text("Row count", exact=True)).to_be_visible()
        save_screenshot(page, shots_dir, screenshots.ASSET_PAGE_FILE, for_readme=True)


def test_japanese_table_page_shows_its_real_names(stack: DemoStack, asset_nodes: dict,
                                                  browser: Browser, shots_dir: Path) -> None:
    table = "顧客メモ"
    node = asset_nodes[source_key(table)]
    with screenshots.new_page(browser, screenshots.ASSET_PAGE_VIEWPORT) as page:
        screenshots.show_asset_page(page, stack.url, source_key(table))
        expect_visible_texts(page, [f"{SCHEMA}.{table}", *column_names(node)])
        save_screenshot(page, shots_dir, "japanese-table-page.png", for_readme=False)


def show_checks_tab(page: Page, base_url: str, key: Sequence[str]) -> None:
    """One asset's page, on its Checks tab (where a check's latest evaluation is shown)."""
    screenshots.show_asset_page(page, base_url, key)
    page.get_by_role("tab", name="Checks").click()
    page.get_by_text("matches_source").first.wait_for()
    screenshots.settle(page)


def materialize_again(stack: DemoStack, expected: str) -> tuple[dict, dict[str, Any]]:
    """Materialize `orders` once more through GraphQL; its check evaluations, and the
    latest materialization's metadata by label."""
    run_id = stack.launch_materialization(loaded_key(TABLE))
    run = stack.wait_for_run(run_id)
    assert run["status"] == expected, stack.run_errors(run_id)
    events = stack.graphql(RUN_EVENTS_QUERY, {"runId": run_id})["logsForRun"]["events"]
    checks = {e["evaluation"]["checkName"]: e["evaluation"] for e in events
              if e["__typename"] == "AssetCheckEvaluationEvent"}
    node = stack.graphql(LATEST_MATERIALIZATION_QUERY,
                         {"assetKey": {"path": list(loaded_key(TABLE))}})
    latest = node["assetNodeOrError"]["assetMaterializations"][0]
    return checks, {e["label"]: e for e in latest["metadataEntries"]}


def test_an_unchanged_table_page(stack: DemoStack, table_run: dict, browser: Browser,
                                 shots_dir: Path) -> None:
    """Loaded again with nothing changed: not read, the materialization says `unchanged`,
    `matches_source` passed in this run (from the destination's figures), and Dagster's
    freshness daemon (run by `dagster dev`, every 30 s) calls the table fresh."""
    checks, metadata = materialize_again(stack, "SUCCESS")
    assert list(checks) == ["matches_source"] and checks["matches_source"]["success"], checks
    assert "row versions are those of the last load" in metadata["unchanged"]["text"]
    key = {"path": list(loaded_key(TABLE))}
    deadline, status = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        info = stack.graphql(FRESHNESS_QUERY, {"assetKey": key})["assetNodeOrError"]
        status = (info["freshnessStatusInfo"] or {}).get("freshnessStatus")
        if status == "HEALTHY":
            break
        time.sleep(2)
    assert status == "HEALTHY", status
    with screenshots.new_page(browser, screenshots.ASSET_PAGE_VIEWPORT) as page:
        screenshots.show_asset_page(page, stack.url, loaded_key(TABLE))
        expect(page.get_by_text("Passing").first).to_be_visible()  # the freshness policy
        save_screenshot(page, shots_dir, "unchanged-table-page.png", for_readme=True)
    with screenshots.new_page(browser, screenshots.ASSET_PAGE_VIEWPORT) as page:
        show_checks_tab(page, stack.url, loaded_key(TABLE))
        expect(page.get_by_text("matches_source").first).to_be_visible()
        expect(page.get_by_text("Passed").first).to_be_visible()
        save_screenshot(page, shots_dir, "unchanged-table-checks.png", for_readme=True)


def test_a_table_altered_by_hand(stack: DemoStack, table_run: dict, browser: Browser,
                                 shots_dir: Path) -> None:
    """A value changed in the destination behind pg_to_bq's back: the next run's
    `matches_source` fails (blocking: the run fails), naming the column; the page shows it."""
    import duckdb

    with duckdb.connect(str(stack.root / "shop.duckdb")) as conn:
        conn.execute(f"UPDATE {DATASET}.{TABLE} SET total = total + 1 "
                     f"WHERE id = (SELECT min(id) FROM {DATASET}.{TABLE})")
    checks, _ = materialize_again(stack, "FAILURE")
    check = checks["matches_source"]
    assert not check["success"] and "total" in check["description"], check
    with screenshots.new_page(browser, screenshots.ASSET_PAGE_VIEWPORT) as page:
        show_checks_tab(page, stack.url, loaded_key(TABLE))
        expect(page.get_by_text("matches_source").first).to_be_visible()
        expect(page.get_by_text("Failed").first).to_be_visible()
        expect(page.get_by_text("total: values changed").first).to_be_visible()
        save_screenshot(page, shots_dir, "altered-table-checks.png", for_readme=True)


def test_the_demo_terminal_shows_no_deprecation_warning(stack: DemoStack, table_run: dict
                                                        ) -> None:
    """The demo runs through the component and `dg dev`: nothing on the terminal tells the
    user to use something else (as `dagster dev`'s SupersessionWarning once did)."""
    text = stack.log_path.read_text(encoding="utf-8", errors="replace")
    assert "dg dev" in text or "Serving dagster-webserver" in text, text[-3000:]
    for word in ("SupersessionWarning", "DeprecationWarning", "superseded", "deprecated"):
        assert word not in text, text[-3000:]


def test_ctrl_c_stops_everything(stack: DemoStack) -> None:
    stack.assert_stops_cleanly()
