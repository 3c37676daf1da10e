"""The sensitive-column rule: which columns are left out by their name, and why.

A name is split into words (snake_case, camelCase, digits: `apiKey` → api, key;
`user_password_hash` → user, password, hash) and a column is left out when a word, or two
adjacent words, name a credential: `password`, `passwd`, `pwd`, `secret`, `token`,
`api key`, `private key`, `access key`, `credential(s)`. Whole words only, so
`passenger_count`, `compass`, `bypass_rule` and `secretary_id` stay; and a credential
followed by a word that describes it (`api_key_name`, `token_type`, `secret_id`) stays too.

Only columns that could hold such a value are left out: text, binary and JSON types.
Numbers, dates, booleans and the like are never excluded by their name (`token_count`,
`used_token` counting LLM tokens are loaded); a column of any type can still be excluded
explicitly (`columns: {name: {exclude: true}}` in the tables file), and an excluded one
loaded with `{exclude: false}` or `defaults: {sensitive_columns: false}`.
"""

from __future__ import annotations

import re

from pg_to_bq.planning.catalog import Column

_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|\b|_)|[A-Z]?[a-z]+|[A-Z]+|\d+")
SECRET_WORDS = frozenset({"password", "passwd", "pwd", "secret", "token", "credential",
                          "credentials", "apikey", "privatekey", "accesskey"})
SECRET_PAIRS = frozenset({("api", "key"), ("private", "key"), ("access", "key"),
                          ("pass", "word")})
# A word after the credential's that makes the column describe it rather than hold it:
# `api_key_name`, `token_type`, `secret_id`, `password_changed_at` are loaded.
DESCRIBING_WORDS = frozenset({"name", "names", "id", "ids", "type", "kind", "label", "count",
                              "length", "expires", "expiry", "expiration", "created", "updated",
                              "changed", "at", "on", "version", "status", "enabled",
                              "required", "policy", "scope", "scopes", "provider", "rotated"})
# Type categories (pg_type.typcategory) that can hold a credential: strings, user-defined
# (bytea is 'U'), JSON is 'U' too; arrays of them ('A') are checked by element.
_STRING_CATEGORIES = frozenset({"S", "U"})
_STRING_TYPES = frozenset({"text", "varchar", "bpchar", "char", "name", "citext", "bytea",
                           "json", "jsonb", "xml"})


def words(name: str) -> list[str]:
    """The lower-case words of a column name (snake_case, camelCase, kebab, digits)."""
    return [w.lower() for w in _WORDS.findall(name)]


def secret_word(name: str) -> str | None:
    """The word (or pair of words) of `name` that names a credential, if any (and no
    describing word follows it: `api_key_name` names a key, it does not hold one)."""
    parts = words(name)
    for index, word in enumerate(parts):
        if word in SECRET_WORDS and not _described(parts, index + 1):
            return word
    for index, pair in enumerate(zip(parts, parts[1:], strict=False)):
        if pair in SECRET_PAIRS and not _described(parts, index + 2):
            return " ".join(pair)
    return None


def _described(parts: list[str], after: int) -> bool:
    return any(word in DESCRIBING_WORDS for word in parts[after:])


def can_hold_text(column: Column) -> bool:
    """Whether the column's type can hold a password or a key: text, binary or JSON."""
    type_name = column.element_type_name or column.base_type_name or column.type_name
    if type_name in _STRING_TYPES:
        return True
    if column.type_category == "A":  # arrays: their element type decides
        return (column.element_type_name or "") in _STRING_TYPES
    return column.type_category in _STRING_CATEGORIES and column.type_kind == "b" \
        and type_name not in ("uuid", "inet", "cidr", "macaddr", "macaddr8", "tsvector",
                              "tsquery", "money", "interval")


def sensitive_reason(column: Column) -> str | None:
    """Why the rule leaves `column` out, or None to load it."""
    word = secret_word(column.name)
    if word is None or not can_hold_text(column):
        return None
    return f"named like a credential ({word!r}) and of type {column.type}"
