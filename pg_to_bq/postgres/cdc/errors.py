"""Errors of change capture, each saying what happened and, where a person must act, what to run."""

from __future__ import annotations


class CdcError(Exception):
    """Base class of this subpackage's errors. `sqlstate` is PostgreSQL's error code, if any."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DbaActionRequired(CdcError):
    """The connected role may not do this itself; `sql` is what a DBA (or the owner) runs."""

    def __init__(self, message: str, sql: str, *, sqlstate: str | None = None) -> None:
        super().__init__(f"{message}\nA DBA can run:\n\n{sql}\n", sqlstate=sqlstate)
        self.sql = sql


class SlotMissing(CdcError):
    """The replication slot does not exist (never created, or dropped by someone)."""


class SlotInvalidated(CdcError):
    """The slot exists but PostgreSQL invalidated it (`wal_status = 'lost'`: the WAL it needed
    was removed, e.g. past `max_slot_wal_keep_size`, or it was idle past
    `idle_replication_slot_timeout`). Its changes are gone: the tables need a fresh copy."""


class SlotBusy(CdcError):
    """Another connection is reading the slot (`active_pid`)."""

    def __init__(self, message: str, *, pid: int | None = None, sqlstate: str | None = None) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.pid = pid


class SlotCreationTimeout(CdcError):
    """Creating a slot waits for every transaction that was running when it started; some
    did not end in time. `blockers` describes them (pid, state, age, query)."""

    def __init__(self, message: str, blockers: list[dict]) -> None:
        super().__init__(message)
        self.blockers = blockers


class ReplicationError(CdcError):
    """The replication connection failed or the server sent something unexpected."""
