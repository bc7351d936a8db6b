"""Salted tombstones: how the store recognises a forgotten person without keeping anything that names them.

A tombstone is sha256(salt + normalised email), or of a per-source id (``source NUL id``: a NUL never occurs in
an email, so the two kinds cannot collide). The salt is random per store (table ``erasure_salt``), so a hash
copied elsewhere cannot be checked against a list of guessed addresses without the store itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import suppress

from sqlalchemy import select
from sqlalchemy.engine import Connection

from connectors.records import Contact, Order, Record, Score, normalise_email
from sync.schema import erasure_salt, forgotten


def email_key(salt: str, normalised_email: str) -> str:
    return hashlib.sha256(f"{salt}{normalised_email}".encode()).hexdigest()


def source_id_key(salt: str, source: str, source_id: str) -> str:
    return hashlib.sha256(f"{salt}\x00{source}\x00{source_id}".encode()).hexdigest()


def read_salt(conn: Connection) -> str:
    return conn.execute(select(erasure_salt.c.salt).where(erasure_salt.c.id == 1)).scalar_one()


def forgotten_keys(conn: Connection) -> set[str]:
    """Every tombstone hash; small (a few per erased person), read once per batch so another process's erasure
    is seen by the very next batch."""
    return set(conn.execute(select(forgotten.c.key_hash)).scalars())


def record_keys(salt: str, record: Record) -> Iterator[str]:
    """The tombstone hashes that would name this record's person: its emails and, for contacts and orders,
    the person's id in that source (an order may carry only the customer id)."""
    emails = [record.match_email] if record.match_email else []
    if isinstance(record, Contact):
        emails += [address.normalised for address in record.additional_emails]
        yield source_id_key(salt, record.source, record.source_id)
        yield from (source_id_key(salt, record.source, merged_id) for merged_id in record.merged_ids)
    elif isinstance(record, Order) and record.customer_source_id:
        yield source_id_key(salt, record.source, record.customer_source_id)
    elif isinstance(record, Score) and "@" in record.source_id:  # scores are keyed by the customer's email
        with suppress(ValueError):  # an id that merely contains "@" is not an address: nothing to match
            emails.append(normalise_email(record.source_id))
    yield from (email_key(salt, email) for email in emails)
