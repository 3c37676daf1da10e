"""Alert messages: pure functions from what happened to ONE message per event.

An event is a failed run, a run that succeeded with failed tables or ERROR checks in it,
or a set of tables that went stale together. However many tables it concerns, it is one
message: tables that failed for the same one-line cause are listed under that cause, once.
Every message names the database, the tables, the causes and links to the run (or the
tables' assets) in the Dagster UI when its URL is known.

Nothing secret leaves in a message: every text goes through `redact`, which masks the
password of any URL (`postgresql://user:secret@host/db` → `postgresql://user:***@host/db`),
`password=...` pairs of a libpq connection string, and each known secret value passed in.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

# SNS rejects a subject of 100 characters or more, or one with line breaks or non-ASCII.
MAX_SUBJECT = 99
# A cause is one line, and not a whole stack trace when a library puts one in its message.
MAX_CAUSE = 500
# With this many stale tables or fewer, each line links to its table's page in the UI.
MAX_LINKED_TABLES = 20

# scheme://user:PASSWORD@host — the password may itself contain '@' when not URL-encoded,
# so it ends at the last '@' before the host.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)(?P<password>\S*?)"
    r"(?=@[^\s@/?#]*(?:[/?#:\s'\")\]]|$))")
# password=... in a libpq keyword/value connection string (quoted or not), PGPASSWORD=...
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\b(?:password|PGPASSWORD)\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|\S+)",
    re.IGNORECASE)


@dataclass(frozen=True)
class TableFailure:
    """A table not loaded in a run, and why (one line). `aliases` are the table's other
    names (its PostgreSQL name, e.g. `public.orders`): a cause that differs from another
    table's only by the table's own name is the same cause (`permission denied for table
    <table>`), so the tables are listed under it once."""

    table: tuple[str, ...]
    cause: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckFailure:
    """An ERROR-severity check that failed on a table."""

    table: tuple[str, ...]
    check: str
    description: str


@dataclass(frozen=True)
class RunReport:
    """What went wrong in one run of a monitored job.

    Attributes:
        run_id: The run's id.
        job: The job's name.
        succeeded: Whether the run itself succeeded (tables or checks may still have failed).
        tables: The tables the run did not load, each with its cause.
        checks: The ERROR checks that failed.
        errors: Causes attached to no table: a failed step that loads none, or the run's own
            failure when no step explains it.
    """

    run_id: str
    job: str
    succeeded: bool
    tables: tuple[TableFailure, ...] = ()
    checks: tuple[CheckFailure, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def has_failures(self) -> bool:
        return bool(self.tables or self.checks or self.errors) or not self.succeeded


@dataclass(frozen=True)
class StaleTable:
    """A table whose freshness policy now fails (Dagster's FreshnessState FAIL)."""

    table: tuple[str, ...]
    last_loaded: datetime | None = None


@dataclass(frozen=True)
class Message:
    """One alert: `subject` (one ASCII line of at most 99 characters, for SNS) and `text`."""

    subject: str
    text: str


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without URL passwords, `password=` values, or any of `secrets`."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + ("***" if m.group("password") else ""),
                             text)
    return _KEYWORD_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def one_line(text: str | None, limit: int = MAX_CAUSE) -> str:
    """The first non-blank line of `text`, whitespace collapsed, at most `limit` characters."""
    for line in (text or "").splitlines():
        line = " ".join(line.split())
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return "no message"


def run_url(ui_url: str | None, run_id: str) -> str | None:
    """The run's page in the Dagster UI."""
    return f"{ui_url}/runs/{run_id}" if ui_url else None


def asset_url(ui_url: str | None, table: Sequence[str]) -> str | None:
    """The asset's page in the Dagster UI."""
    if not ui_url:
        return None
    return f"{ui_url}/assets/" + "/".join(quote(part, safe="") for part in table)


def run_message(report: RunReport, *, database: str, ui_url: str | None = None,
                secrets: Iterable[str] = ()) -> Message | None:
    """The one message for a run: failed, or succeeded with failed tables or ERROR checks.

    Returns None for a run that succeeded with nothing failed.

    Args:
        report: What went wrong in the run.
        database: How to name the mirrored database.
        ui_url: The Dagster UI's base URL, for a link to the run.
        secrets: Values that must not appear in the message.
    """
    if not report.has_failures:
        return None
    tables, checks = len(report.tables), len(report.checks)
    counts = _and([_count(tables, "table"), _count(checks, "ERROR check")])
    if report.succeeded:
        headline = f"run of {report.job} succeeded, but {counts} failed"
        subject = f"{counts} failed in {report.job}"
    else:
        headline = f"run of {report.job} failed" + (f": {counts} failed" if counts else "")
        subject = f"{report.job} failed" + (f": {counts}" if counts else "")
    short = _short_names([t.table for t in report.tables] + [c.table for c in report.checks])
    lines = [f"pg_to_bq · {database}: {headline}."]
    if report.tables:
        lines += ["", f"Failed tables ({tables}){_under(short)}, by cause:"]
        for cause, names in _by_cause(report.tables, short):
            lines.append(f"• {cause} — {_count(len(names), 'table')}:")
            lines.append(f"    {', '.join(names)}")
    if report.checks:
        lines += ["", f"Failed ERROR checks ({checks}){_under(short)}:"]
        for failure in sorted(report.checks, key=lambda c: (c.check, short.names[c.table])):
            lines.append(f"• {short.names[failure.table]} · {failure.check}: "
                         f"{one_line(failure.description)}")
    if report.errors:
        lines += ["", "Errors:"]
        lines += [f"• {one_line(error)}" for error in report.errors]
    link = run_url(ui_url, report.run_id)
    lines += ["", f"Run: {link}" if link else f"Run id: {report.run_id}"]
    return _message(f"pg_to_bq {database}: {subject}", "\n".join(lines), secrets)


def stale_message(tables: Sequence[StaleTable], *, database: str, ui_url: str | None = None,
                  now: datetime | None = None, secrets: Iterable[str] = ()) -> Message | None:
    """The one message for tables that went stale under their freshness policy together.

    Args:
        tables: The tables whose freshness state became FAIL.
        database: How to name the mirrored database.
        ui_url: The Dagster UI's base URL, for links to the tables' pages.
        now: The time the ages are measured to (default: now).
        secrets: Values that must not appear in the message.
    """
    if not tables:
        return None
    now = now or datetime.now(UTC)
    short = _short_names([t.table for t in tables])
    count = _count(len(tables), "table")
    verb, its = ("is", "its") if len(tables) == 1 else ("are", "their")
    lines = [f"pg_to_bq · {database}: {count}{_under(short)} {verb} stale: not loaded as "
             f"often as {its} freshness policy expects.", ""]
    link_each = len(tables) <= MAX_LINKED_TABLES
    for stale in sorted(tables, key=lambda t: short.names[t.table]):
        line = f"• {short.names[stale.table]}: {_last_loaded(stale.last_loaded, now)}"
        link = asset_url(ui_url, stale.table) if link_each else None
        lines.append(f"{line} {link}" if link else line)
    if ui_url and not link_each:
        lines += ["", f"Assets: {ui_url}/assets"]
    return _message(f"pg_to_bq {database}: {count} stale", "\n".join(lines), secrets)


@dataclass(frozen=True)
class _ShortNames:
    prefix: tuple[str, ...]
    names: dict[tuple[str, ...], str]


def _short_names(tables: Sequence[tuple[str, ...]]) -> _ShortNames:
    """Tables named without the key prefix they all share (said once, in the heading)."""
    unique = list(dict.fromkeys(tables))
    prefix: tuple[str, ...] = ()
    if len(unique) > 1 or (unique and len(unique[0]) > 1):
        shortest = min(len(t) for t in unique)
        common = 0
        while common < shortest - 1 and len({t[common] for t in unique}) == 1:
            common += 1
        prefix = unique[0][:common]
    return _ShortNames(prefix, {t: "/".join(t[len(prefix):]) for t in unique})


def _under(short: _ShortNames) -> str:
    return f" in {'/'.join(short.prefix)}" if short.prefix else ""


def _by_cause(failures: Sequence[TableFailure], short: _ShortNames) -> list[tuple[str, list[str]]]:
    """(cause, table names) with the most common cause first. Tables whose causes differ
    only by their own names share the cause with the name replaced by `<table>`."""
    groups: dict[str, list[TableFailure]] = {}
    for failure in failures:
        groups.setdefault(_generic(one_line(failure.cause), failure), []).append(failure)
    listed = [(generic if len(members) > 1 else one_line(members[0].cause),
               sorted(short.names[m.table] for m in members))
              for generic, members in groups.items()]
    return sorted(listed, key=lambda group: (-len(group[1]), group[0]))


def _generic(cause: str, failure: TableFailure) -> str:
    """`cause` with the failed table's own names replaced by `<table>`: a distinctive name
    (`public__orders`, `public.orders`, `"public"."orders"`, `"orders"`) anywhere, a plain
    word (`orders`, `user`) only where PostgreSQL names a table (after `table`, `relation`
    or `view`), so `for user loader` stays as it is for a table named `user`."""
    names = {failure.table[-1]}
    for alias in failure.aliases:
        schema, dot, name = alias.rpartition(".")
        names.update({alias, f'"{schema}"."{name}"', name} if dot else {alias})
    distinctive = {n for n in names if not n.isalpha()} | {f'"{n}"' for n in names}
    for name in sorted((n for n in distinctive if len(n) >= 3), key=len, reverse=True):
        cause = re.sub(rf'(?<![\w."]){re.escape(name)}(?![\w"])', "<table>", cause)
    for name in sorted((n for n in names if n.isalpha()), key=len, reverse=True):
        cause = re.sub(rf"(\b(?:table|relation|view) ){re.escape(name)}\b", r"\1<table>", cause)
    return cause


def _last_loaded(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never loaded"
    hours = (now - when).total_seconds() / 3600
    age = f"{hours:.0f} h ago" if hours >= 1 else f"{hours * 60:.0f} min ago"
    return f"last loaded {when.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({age})"


def _count(n: int, noun: str) -> str:
    return "" if n == 0 else f"{n} {noun}" + ("" if n == 1 else "s")


def _and(parts: list[str]) -> str:
    return " and ".join(p for p in parts if p)


def _message(subject: str, text: str, secrets: Iterable[str]) -> Message:
    secrets = tuple(secrets)
    return Message(subject=_subject(redact(subject, secrets)), text=redact(text, secrets))


def _subject(text: str) -> str:
    """One ASCII line of at most MAX_SUBJECT characters (what SNS accepts)."""
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = "".join(c if c.isascii() else "?" for c in decomposed
                         if not unicodedata.combining(c))
    line = " ".join("".join(c if c.isprintable() else " " for c in ascii_text).split())
    return line if len(line) <= MAX_SUBJECT else line[: MAX_SUBJECT - 3] + "..."
