"""Contact fields kept the same across tools (HubSpot <-> Mailchimp), and who opted out where.

Vendor-neutral: it sees canonical Contacts of every connected tool that takes part (a Target with
``contact_fields``), keyed by normalised email (primary and additional). For each person and each shared field
(first name, last name, phone, company) it decides the value every tool should hold:

1. All tools that have a value agree: nothing to do, and that value becomes the *agreed* one.
2. Otherwise the tools whose value differs from the agreed one have changed it since; if they all changed it to
   the same value, that value wins.
3. Otherwise (no agreed value yet, e.g. the first sync, or two tools changed it differently) the value of the
   tool whose record changed most recently wins; equal or unknown times go to the tool listed first in
   settings (HubSpot before Mailchimp: the CRM is the record of truth).
4. An empty value never replaces a filled one: clearing a phone in one tool does not erase it in the others.

The agreed value is remembered only when the tools are *read* agreeing, never when we merely send it: a write
that failed therefore cannot make the other side's old value look like a fresh change. A value equal to our
own write comes back as agreement (echo suppression): nothing is sent again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from connectors.records import Contact
from sync.store import RunCounts, Store

AGREED = "agreed-contact-fields"  # the ledger "target" holding each person's last agreed values
CONTACT_FIELDS = ("first_name", "last_name", "phone", "company_name")


@dataclass
class Linked:
    """What one run decided: person (normalised email) → field → the value every tool should hold."""

    values: dict[str, dict[str, str]] = field(default_factory=dict)
    opted_out: dict[str, tuple[str, ...]] = field(default_factory=dict)  # person → tools where they opted out
    conflicts: int = 0  # fields that two tools both changed (rule 3 decided)
    # (person, field) → value read agreeing this run, where it differs from the one last remembered
    agreed: dict[tuple[str, str], str] = field(default_factory=dict)


def _clean(value: str | None) -> str | None:
    text = (value or "").strip()
    return text or None


def _by_person(contacts: Sequence[Contact]) -> dict[str, Contact]:
    """One contact per email: where a tool has several (one person on two audiences), the latest changed."""
    found: dict[str, Contact] = {}
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    for contact in contacts:
        for email in (contact.email, *contact.additional_emails):
            if email is None:
                continue
            held = found.get(email.normalised)
            if held is None or (contact.updated_at or oldest) > (held.updated_at or oldest):
                found[email.normalised] = contact
    return found


def link_contacts(tools: Mapping[str, Sequence[Contact]], agreed: Mapping[tuple[str, str], str | None],
                  fields: Sequence[str] = CONTACT_FIELDS) -> Linked:
    """Decide every shared field of every person found in ``tools`` (tool name → its current contacts, in the
    settings' order). ``agreed`` is what was last read agreeing, by (person, field)."""
    people = {tool: _by_person(contacts) for tool, contacts in tools.items()}
    linked = Linked()
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    for person in sorted({p for found in people.values() for p in found}):
        holders = [(tool, found[person]) for tool, found in people.items() if person in found]
        opted_out = tuple(tool for tool, contact in holders if contact.is_unsubscribed)
        if opted_out:
            linked.opted_out[person] = opted_out
        decided: dict[str, str] = {}
        for name in fields:
            held = [(tool, contact, _clean(getattr(contact, name))) for tool, contact in holders]
            filled = [(tool, contact, value) for tool, contact, value in held if value is not None]
            distinct = {value for _, _, value in filled}
            if not distinct:
                continue
            if len(distinct) == 1:
                value = distinct.pop()
                if len(filled) == len(held) and len(held) > 1 and agreed.get((person, name)) != value:
                    linked.agreed[(person, name)] = value  # only what moved: the rest is in the store already
                decided[name] = value
                continue
            base = agreed.get((person, name))
            changed = [(tool, contact, value) for tool, contact, value in filled if value != base]
            if base is not None and len({value for _, _, value in changed}) == 1:
                decided[name] = changed[0][2]
                continue
            linked.conflicts += 1
            candidates = changed if base is not None else filled
            # Latest change wins; ties go to the tool listed first (max keeps the first of equal keys).
            latest = max(range(len(candidates)), key=lambda i: (candidates[i][1].updated_at or oldest, -i))
            decided[name] = candidates[latest][2]
        if decided and len(holders) > 0:
            linked.values[person] = decided
    return linked


def agreed_values(store: Store, people: Sequence[str] | None = None) -> dict[tuple[str, str], str | None]:
    """The agreed values remembered, by (person, field): everyone's, or those of ``people``."""
    return {key: row.confirmed_value for key, row in store.ledger_rows(AGREED, people).items() if row.confirmed}


def remember_agreed(store: Store, agreed: Mapping[tuple[str, str], str],
                    known: Mapping[tuple[str, str], str | None] | None = None) -> int:
    """Keep the values read (or written) agreeing this run, (person, field) → value, those that moved only, in one
    transaction of the run history. ``known`` is what the store holds; without it, the store is asked for these
    people's values only (a whole audience's agreed values need not stay in memory through the writes)."""
    items = sorted(agreed.items())  # by person: each part of people is one run of the list
    moved = []
    for start in range(0, len(items), AGREED_PEOPLE_AT_ONCE):
        part = items[start : start + AGREED_PEOPLE_AT_ONCE]
        held = known if known is not None else agreed_values(store, sorted({person for (person, _), _ in part}))
        moved += [(person, name, value) for (person, name), value in part if held.get((person, name)) != value]
    if not moved:
        return 0
    with store.transaction() as conn:
        run_id = store.begin_run(conn, "sync", f"agree {len(moved):,} contact fields", datetime.now(timezone.utc))
        for start in range(0, len(moved), 2_000):
            chunk = moved[start : start + 2_000]
            store.record_intents(conn, AGREED, chunk, run_id)
            store.confirm_writes(conn, AGREED, [(person, name) for person, name, _ in chunk])
        store.finish_run(conn, run_id, "succeeded", RunCounts())
    return len(moved)


AGREED_PEOPLE_AT_ONCE = 5_000  # agreed values read back at once (their people make an SQL IN list)
