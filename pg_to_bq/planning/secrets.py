"""Parse and repair secrets. Pure functions: errors name the secret id and field, never a value.

Source secret (`PG_TO_BQ_SOURCE_SECRET`): either the URL as plain text, or JSON with
`url` (or `connection_string`), or the RDS layout `host`, `port`, `username`, `password`,
`dbname`.

BigQuery secret (`PG_TO_BQ_BIGQUERY_CREDENTIALS_SECRET`): a service-account key JSON.
A `private_key` whose newlines arrived escaped (`\\n`, as the Secrets Manager console's
key/value editor stores them) is repaired, then parsed to prove it is a key.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

SERVICE_ACCOUNT_FIELDS = ("type", "project_id", "private_key", "client_email", "token_uri")


class SecretError(ValueError):
    """A secret is missing, unreadable or malformed."""


def source_url_from_secret(secret_string: str, secret_id: str) -> str:
    """The PostgreSQL URL held by a source secret."""
    text = secret_string.strip()
    if text.startswith(("postgresql://", "postgres://", "postgresql+")):
        return text
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise SecretError(
            f"secret {secret_id!r} holds neither a postgresql:// URL nor JSON"
        ) from None
    if not isinstance(data, dict):
        raise SecretError(f"secret {secret_id!r}: expected a JSON object")
    for key in ("url", "connection_string", "source_url"):
        if isinstance(data.get(key), str):
            return source_url_from_secret(data[key], f"{secret_id}.{key}")
    missing = [k for k in ("host", "username", "password") if not data.get(k)]
    if missing:
        raise SecretError(
            f"secret {secret_id!r} has no 'url' and lacks field(s) {missing} "
            "(expected url, or host/port/username/password/dbname)"
        )
    user = quote(str(data["username"]), safe="")
    password = quote(str(data["password"]), safe="")
    port = data.get("port") or 5432
    dbname = quote(str(data.get("dbname") or data.get("database") or "postgres"), safe="")
    return f"postgresql://{user}:{password}@{data['host']}:{port}/{dbname}"


def service_account_info(secret_string: str, secret_id: str) -> dict[str, Any]:
    """A validated service-account info dict, with an escaped private key repaired."""
    try:
        info = json.loads(secret_string)
    except json.JSONDecodeError:
        raise SecretError(
            f"secret {secret_id!r} is not JSON: expected a Google service-account key file"
        ) from None
    if not isinstance(info, dict):
        raise SecretError(f"secret {secret_id!r}: expected a JSON object (a service-account key)")
    return repair_service_account(info, secret_id)


def repair_service_account(info: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [f for f in SERVICE_ACCOUNT_FIELDS if not info.get(f)]
    if missing:
        raise SecretError(f"{where}: service-account field(s) {missing} are missing or empty")
    if info["type"] != "service_account":
        raise SecretError(f"{where}: field 'type' must be 'service_account'")
    repaired = dict(info)
    repaired["private_key"] = repair_private_key(info["private_key"], where)
    return repaired


def repair_private_key(key: Any, where: str) -> str:
    """Undo `\\n` escaping of a PEM key, then prove it parses."""
    if not isinstance(key, str):
        raise SecretError(f"{where}: field 'private_key' must be a string")
    fixed = key.strip()
    if "\\n" in fixed and "\n" not in fixed.strip("\n"):
        fixed = fixed.replace("\\n", "\n")
    fixed = fixed.replace("\r\n", "\n")
    if not fixed.endswith("\n"):
        fixed += "\n"
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(fixed.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise SecretError(
            f"{where}: field 'private_key' is not a readable PEM private key "
            "(check that it was pasted whole, including the BEGIN/END lines)"
        ) from None
    return fixed
