"""A run's outcome, read from Dagster's event log as the facts `messages` turns into text.

What the mirror's steps record, and what is read here (one pass over the run's events of
these types, in order, so a later attempt of a retried step overrides an earlier one):

- `ASSET_MATERIALIZATION_PLANNED`: the tables the run set out to load, by step.
- `ASSET_MATERIALIZATION`: a table loaded.
- `ASSET_OBSERVATION` with metadata `pg_to_bq/load_failed` (the one-line cause): a table
  its step could not load. A later materialization of the table clears it.
- `ASSET_CHECK_EVALUATION` with passed=False and severity ERROR: a failed check (a later
  passing evaluation of the same check clears it). WARN checks are not alerted.
- `STEP_FAILURE`: a step's error (a `dg.Failure`'s description, else the error's first line)
  becomes the cause of the tables the step planned and did not load, when no table of that
  step reported a cause of its own (the step failed before any table: the source, a secret,
  the destination). A failed step that planned no table is reported as an error of its own.
- Tables planned in steps that never finished (the run stopped, or an upstream step
  failed) are reported with the run's failure as their cause.

The asset specs' `pg_to_bq/source_table` metadata (the PostgreSQL name) lets causes that
differ only by the table's name be grouped (`permission denied for table <table>`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import dagster as dg

from pg_to_bq.alerts.messages import CheckFailure, RunReport, TableFailure, one_line

LOAD_FAILED = "pg_to_bq/load_failed"
SOURCE_TABLE = "pg_to_bq/source_table"
_PAGE = 5_000
_TYPES = {
    dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    dg.DagsterEventType.ASSET_MATERIALIZATION,
    dg.DagsterEventType.ASSET_OBSERVATION,
    dg.DagsterEventType.ASSET_CHECK_EVALUATION,
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
}


def run_report(instance: dg.DagsterInstance, run: dg.DagsterRun, *, succeeded: bool,
               run_error: str | None = None,
               aliases: Mapping[tuple[str, ...], tuple[str, ...]] | None = None) -> RunReport:
    """What failed in `run`: its unloaded tables with their causes, its failed ERROR checks,
    and errors attached to no table.

    Args:
        instance: The instance holding the run's events.
        run: The run.
        succeeded: Whether the run succeeded.
        run_error: The run's own failure, used as the cause of tables whose step never
            finished, and as the error when nothing else explains a failed run.
        aliases: Other names of tables by asset key path (`source_tables`), so causes that
            differ only by the table's name are grouped.
    """
    aliases = aliases or {}
    planned: dict[tuple[str, ...], str | None] = {}  # table → the step that was to load it
    loaded: set[tuple[str, ...]] = set()
    causes: dict[tuple[str, ...], str] = {}
    checks: dict[tuple[tuple[str, ...], str], CheckFailure] = {}
    steps_with_causes: set[str] = set()
    succeeded_steps: set[str] = set()
    step_errors: dict[str, str] = {}

    for entry in _events(instance, run.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type
        step = entry.step_key
        if kind == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            planned.setdefault(_path(event.asset_key), step)
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
            table = _path(event.asset_key)
            loaded.add(table)
            causes.pop(table, None)
        elif kind == dg.DagsterEventType.ASSET_OBSERVATION:
            metadata = event.asset_observation_data.asset_observation.metadata
            if LOAD_FAILED in metadata:
                table = _path(event.asset_key)
                causes[table] = one_line(_text(metadata[LOAD_FAILED]))
                loaded.discard(table)
                if step:
                    steps_with_causes.add(step)
        elif kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.asset_check_evaluation_data
            key = (_path(evaluation.asset_key), evaluation.check_name)
            if evaluation.passed or evaluation.severity != dg.AssetCheckSeverity.ERROR:
                checks.pop(key, None)
                continue
            checks[key] = CheckFailure(key[0], evaluation.check_name,
                                       one_line(evaluation.description or "failed"))
            if step:
                steps_with_causes.add(step)
        elif kind == dg.DagsterEventType.STEP_SUCCESS and step:
            succeeded_steps.add(step)
            step_errors.pop(step, None)
        elif kind == dg.DagsterEventType.STEP_FAILURE and step:
            step_errors[step] = _step_error(event)

    tables = [TableFailure(table, cause, aliases.get(table, ())) for table, cause in causes.items()]
    steps_covered: set[str] = set()
    for table, step in planned.items():
        if table in loaded or table in causes:
            continue
        if step in step_errors:
            steps_covered.add(step)
            if step not in steps_with_causes:
                tables.append(TableFailure(table, step_errors[step], aliases.get(table, ())))
        elif step not in succeeded_steps and not succeeded:
            # Its step never finished: the run stopped, or a step it needs failed.
            cause = f"not loaded: {one_line(run_error)}" if run_error \
                else "not loaded: the run failed first"
            tables.append(TableFailure(table, cause, aliases.get(table, ())))
    errors = [f"step {step}: {error}" for step, error in step_errors.items()
              if step not in steps_covered and step not in steps_with_causes]
    if not succeeded and not (tables or checks or errors):
        errors.append(one_line(run_error) if run_error else "the run failed")
    return RunReport(run_id=run.run_id, job=run.job_name, succeeded=succeeded,
                     tables=tuple(tables), checks=tuple(checks.values()), errors=tuple(errors))


def source_tables(repository: dg.RepositoryDefinition) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Each table asset's PostgreSQL name (its `pg_to_bq/source_table` metadata, as the
    mirror's asset specs carry it), by asset key path."""
    names: dict[tuple[str, ...], tuple[str, ...]] = {}
    for assets_def in dict.fromkeys(repository.assets_defs_by_key.values()):
        for key, spec in assets_def.specs_by_key.items():
            source = (spec.metadata or {}).get(SOURCE_TABLE)
            if source is not None:
                names[tuple(key.path)] = (_text(source),)
    return names


def run_failure_error(event: dg.DagsterEvent | None) -> str | None:
    """The one-line error of a run's failure event (`RunFailureSensorContext.failure_event`)."""
    if event is None:
        return None
    error = getattr(event.event_specific_data, "error", None)
    message = getattr(error, "message", None) or event.message
    return one_line(message) if message else None


def _events(instance: dg.DagsterInstance, run_id: str) -> Iterator[dg.EventLogEntry]:
    cursor = None
    while True:
        page = instance.get_records_for_run(run_id, cursor=cursor, of_type=_TYPES, limit=_PAGE)
        for record in page.records:
            yield record.event_log_entry
        if not page.has_more:
            return
        cursor = page.cursor


def _step_error(event: dg.DagsterEvent) -> str:
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return one_line(data.user_failure_data.description)
    if data.error is not None:
        return one_line(data.error.message)
    return one_line(event.message)


def _path(key: dg.AssetKey | None) -> tuple[str, ...]:
    return tuple(key.path) if key is not None else ("?",)


def _text(value: object) -> str:
    return str(getattr(value, "value", value))
