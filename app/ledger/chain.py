"""The canonical form of an entry and its hash link. Shared by posting and by `flask ledger verify`."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
# Token fields are restricted so that '|' can separate them unambiguously; memo is JSON-quoted.
TOKEN = re.compile(r"^[A-Za-z0-9:_.\-]*\Z")


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICRO


def canonical(
    account_id, seq, delta, balance_after, kind, source, activity, rule_id, co2e_g,
    ref_type, ref_id, actor_type, actor_id, reverses_id, created_micros, memo, reason_digest=None,
) -> str:  # fmt: skip
    """An entry with no reason (every one before reasons were kept apart) has the form it always had."""
    return (
        f"{account_id}|{seq}|{delta}|{balance_after}|{kind}|{source}|{activity or ''}|{rule_id or ''}|"
        f"{co2e_g}|{ref_type}|{ref_id}|{actor_type}|{actor_id or ''}|{reverses_id or ''}|{created_micros}|"
        f"{json.dumps(memo, ensure_ascii=False) if memo else ''}" + (f"|{reason_digest}" if reason_digest else "")
    )


def new_salt() -> str:
    return secrets.token_hex(16)


def reason_digest(salt: str, text: str) -> str:
    return hashlib.sha256((salt + text).encode()).hexdigest()


def link(prev_hash: str, canonical_text: str) -> str:
    return hashlib.sha256((prev_hash + canonical_text).encode()).hexdigest()
