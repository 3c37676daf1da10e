"""Connections to the source PostgreSQL: every one read-only, named and time-limited."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pg_to_bq.planning.settings import redact_url

if TYPE_CHECKING:
    import psycopg

APPLICATION_NAME = "pg_to_bq"


class SourceUnreachable(ConnectionError):
    """PostgreSQL could not be reached or refused the login (the message never has the password)."""


def libpq_url(url: str) -> str:
    """Turn a SQLAlchemy-style URL (`postgresql+psycopg2://`) into a plain libpq URI."""
    parts = urlsplit(url)
    scheme = "postgresql"
    return parts._replace(scheme=scheme).geturl() if parts.scheme != scheme else url


def with_options(url: str, application_name: str, statement_timeout_s: int) -> str:
    """Add application_name and a statement timeout to a libpq URI (kept if already set)."""
    parts = urlsplit(libpq_url(url))
    query = dict(parse_qsl(parts.query))
    query.setdefault("application_name", application_name)
    if statement_timeout_s:
        options = query.get("options", "")
        if "statement_timeout" not in options:
            query["options"] = f"{options} -c statement_timeout={statement_timeout_s * 1000}".strip()
    query.setdefault("connect_timeout", "10")
    return parts._replace(query=urlencode(query, quote_via=quote)).geturl()


def login_role(url: str) -> str | None:
    """The role a URL logs in as (None when libpq would pick it: PGUSER, the OS user)."""
    user = urlsplit(url).username
    return unquote(user) if user else None


def describe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}/{parts.path.lstrip('/')}"


@contextlib.contextmanager
def connect(
    url: str, *, application_name: str = APPLICATION_NAME, statement_timeout_s: int = 3600
) -> Iterator[psycopg.Connection]:
    """A psycopg connection in a read-only session; errors name host and port, never the password.

    psycopg is imported here: a code location that reads its catalog snapshot never connects."""
    import psycopg

    try:
        conn = psycopg.connect(with_options(url, application_name, statement_timeout_s))
    except psycopg.OperationalError as exc:
        raise SourceUnreachable(
            f"cannot connect to PostgreSQL at {describe(url)}: {_cause(exc, url)}"
        ) from None
    try:
        conn.read_only = True
        yield conn
    finally:
        conn.close()


def check_reachable(url: str, *, application_name: str = APPLICATION_NAME) -> None:
    """Connect once with each library that connects during a load: psycopg (the catalog)
    and the ADBC driver (the COPY reads, its own libpq and OpenSSL). Both read sslmode,
    sslrootcert and the other libpq parameters from the URL's query.

    Raises:
        SourceUnreachable: one line naming host, port and database and the cause (a TLS,
            login or network failure), never the password; so a sync stops before any
            table is tried instead of failing every table with the same error.
    """
    with connect(url, application_name=application_name, statement_timeout_s=60) as conn:
        conn.execute("SELECT 1")
    from pg_to_bq.postgres.session import AdbcSession

    try:
        session = AdbcSession(with_options(url, application_name, 60))
    except Exception as exc:  # the driver raises its own error classes
        raise SourceUnreachable(
            f"cannot connect to PostgreSQL at {describe(url)} (ADBC driver): "
            f"{_cause(exc, url)}") from None
    session.close()


# What to do about a connection failure whose fix is not in its own words.
_CONNECT_HINTS = (
    ("no encryption", "the server accepts only TLS connections: add "
     "sslmode=verify-full&sslrootcert=<the server's CA file> to the URL"),
    ("certificate verify failed", "the server's certificate is not signed by a CA in "
     "sslrootcert (for RDS: the region's certificate bundle from AWS)"),
)


def _cause(exc: BaseException, url: str) -> str:
    text = _first_line(exc, url)
    hint = next((hint for words, hint in _CONNECT_HINTS if words in text), None)
    return f"{text}; {hint}" if hint else text


def _first_line(exc: BaseException, url: str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    password = urlsplit(url).password
    if password:
        text = text.replace(password, "***")
    return text.replace(url, redact_url(url))
