"""Scores written back as HubSpot contact properties: the property group and typed properties, coercion, batch update.

The engine (sync.engine.push_changes) decides what changed; this module creates what HubSpot needs on first use,
turns values into exactly what HubSpot would store, and reports per change what HubSpot said.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from connectors.base import Change, Held, Receipt, RecordRejected
from connectors.hubspot.client import AlreadyExists, HubSpotClient
from connectors.hubspot.mapping import parse_time
from connectors.records import Contact, RiskBand, Score
from scoring.segments import SEGMENTS
from scoring.sentiment_bands import sentiment_label

log = logging.getLogger(__name__)
TEXT_LIMIT = 65_536  # HubSpot: a text property holds at most 65,536 characters
SENTIMENTS = ("positive", "neutral", "negative")


@dataclass(frozen=True)
class PropertySpec:
    key: str  # what the helper fills: "churn_risk"
    label: str
    type: str
    field_type: str
    options: tuple[str, ...] = ()
    decimals: int | None = None  # numbers are rounded to this before comparing and sending


SPECS = (
    PropertySpec("churn_risk", "Churn risk (%)", "number", "number", decimals=1),
    PropertySpec("risk_band", "Churn risk band", "enumeration", "select", tuple(b.value for b in RiskBand)),
    PropertySpec("churn_reasons", "Churn reasons", "string", "textarea"),
    PropertySpec("segment", "Customer segment", "enumeration", "select", SEGMENTS),
    PropertySpec("clv", "Customer lifetime value (12 months)", "number", "number", decimals=2),
    PropertySpec("sentiment", "Last survey sentiment", "enumeration", "select", SENTIMENTS),
    PropertySpec("last_nps", "Last NPS", "number", "number", decimals=0),
    # Where the person unsubscribed (or bounced) in another tool: HubSpot's own opt-out is not writable through
    # its API (only its subscription centre sets it), so this is what owners filter their lists and workflows on.
    PropertySpec("unsubscribed_in", "Unsubscribed from email in", "string", "text"),
    PropertySpec("scored_at", "Scored at", "datetime", "date"),
)


def default_names(group: str) -> dict[str, str]:
    return {spec.key: f"{group}_{spec.key}" for spec in SPECS}


def canonical_number(value: Any, decimals: int | None) -> str:
    """A number as HubSpot stores it: rounded half-up, plain decimal, no trailing zeros."""
    number = Decimal(str(value).strip())
    if decimals is not None:
        number = number.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    text = format(number, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class HubSpotDestination:
    """Contact properties in one HubSpot account. ``merged_away`` holds contact ids that must never be written."""

    name = "hubspot"

    def __init__(self, client: HubSpotClient, *, names: Mapping[str, str] | None = None, merged_away: Iterable[str] = ()) -> None:
        settings = client.settings
        self.client = client
        self.group, self.group_label = settings.property_group, settings.property_group_label
        self.names = {**default_names(self.group), **(names or {})}
        self.spec_by_property = {self.names[s.key]: s for s in SPECS}
        # Ours under our own group's names; a name the owner mapped (an existing property of theirs) is not.
        self.owned = frozenset(name for name in default_names(self.group).values() if name in self.spec_by_property)
        self.objects_per_apply = settings.batch_size * 10
        self.batch_size = settings.batch_size
        self.merged_away = set(merged_away)
        self.incompatible: dict[str, str] = {}  # property name → the one line saying why it is not written
        self._ready = False
        self._read: dict[str, Contact] = {}  # contact id → the contact as the store holds it from the reads

    def know_contacts(self, contacts: Iterable[Contact]) -> None:
        """The account's contacts as read, a part of the people at a time: ``held`` answers from the current part's
        (the engine asks as each object comes), and ids merged away are never written (what the parts name adds
        up: an earlier part's changes may still wait to be sent)."""
        self._read = {contact.source_id: contact for contact in contacts if contact.source == "hubspot"}
        self.merged_away.update(old for contact in self._read.values() for old in contact.merged_ids)

    # --- the properties -------------------------------------------------------------------------------------------

    def ensure_properties(self) -> None:
        """Create the group and properties HubSpot lacks; reuse compatible ones; refuse incompatible ones, once."""
        if self._ready:
            return
        groups = {g["name"] for g in self.client.groups("contacts").get("results", [])}
        if self.group not in groups:
            self._create(self.client.create_group, {"name": self.group, "label": self.group_label, "displayOrder": -1})
        existing = {p["name"]: p for p in self.client.properties("contacts").get("results", [])}
        for name, spec in self.spec_by_property.items():
            if name not in existing:
                if self._create(self.client.create_property, self._definition(name, spec)):
                    continue
                existing = {p["name"]: p for p in self.client.properties("contacts").get("results", [])}
            problem = incompatibility(existing[name], spec)
            if problem:
                self.incompatible[name] = f"HubSpot property {name} {problem}; rename or delete it in HubSpot, or map {spec.key} to another name"
                log.warning(self.incompatible[name])
        self._ready = True

    def _create(self, create: Any, body: dict[str, Any]) -> bool:
        """True if created; False if it already existed (409: someone made it between our read and our write)."""
        try:
            create("contacts", body)
            return True
        except AlreadyExists:
            return False

    def _definition(self, name: str, spec: PropertySpec) -> dict[str, Any]:
        body = {"name": name, "label": spec.label, "type": spec.type, "fieldType": spec.field_type, "groupName": self.group,
                "description": "Written by retention-sync; changes here are overwritten on the next push."}
        if spec.options:
            body["options"] = [{"label": o, "value": o, "displayOrder": i, "hidden": False} for i, o in enumerate(spec.options)]
        return body

    # --- the Destination protocol -------------------------------------------------------------------------------------

    def coerce(self, field_name: str, value: str | None) -> str | None:
        spec = self.spec_by_property.get(field_name)
        if value is None or value == "" or spec is None:
            return value or None
        if spec.type not in ("number", "datetime"):
            return value[:TEXT_LIMIT]
        try:
            return _as_stored(spec.type, spec.decimals, value)
        except (InvalidOperation, ValueError):
            return value  # HubSpot will refuse it; the receipt carries its reason and the ledger holds it back

    def current(self, object_ids: Sequence[str], field_names: Sequence[str]) -> dict[str, dict[str, str | None]]:
        found = self.client.batch_read("contacts", list(object_ids), list(field_names))
        return {o["id"]: {f: (o.get("properties") or {}).get(f) or None for f in field_names} for o in found}

    def held(self, object_ids: Sequence[str]) -> dict[str, Held]:
        found = {}
        for object_id in object_ids:
            contact = self._read.get(object_id)
            values = {} if contact is None else {name: self.coerce(name, contact.properties[name])
                                                 for name in self.spec_by_property if name in contact.properties}
            if values:  # read without our properties (they did not exist yet): nothing is known of them
                found[object_id] = Held((contact.source, contact.source_id), values)
        return found

    def apply(self, changes: Sequence[Change]) -> Sequence[Receipt]:
        self.ensure_properties()
        receipts: list[Receipt] = []
        by_object: dict[str, list[Change]] = {}
        for change in changes:
            if change.object_id in self.merged_away:
                receipts.append(Receipt(change, False, f"contact {change.object_id} was merged into another contact; scores go to the survivor"))
            elif change.field_name in self.incompatible:
                receipts.append(Receipt(change, False, self.incompatible[change.field_name]))
            else:
                by_object.setdefault(change.object_id, []).append(change)
        objects = list(by_object.items())
        for start in range(0, len(objects), self.batch_size):
            receipts.extend(self._send(dict(objects[start : start + self.batch_size])))
        return receipts

    def _send(self, batch: dict[str, list[Change]]) -> list[Receipt]:
        """One batch update; a whole-batch 400 is bisected until the inputs HubSpot refuses are alone."""
        inputs = [{"id": object_id, "properties": {c.field_name: c.value or "" for c in fields}} for object_id, fields in batch.items()]
        try:
            reply = self.client.batch_update("contacts", inputs)
        except RecordRejected as exc:
            if len(batch) == 1:
                return [Receipt(c, False, str(exc)) for fields in batch.values() for c in fields]
            items = list(batch.items())
            half = len(items) // 2
            return self._send(dict(items[:half])) + self._send(dict(items[half:]))
        refused = {}
        for error in reply.get("errors", []):
            reason = f"{error.get('category', 'error')}: {error.get('message', 'refused')}"
            for object_id in (error.get("context") or {}).get("ids", []):
                refused[str(object_id)] = reason
        return [Receipt(c, c.object_id not in refused, refused.get(c.object_id)) for fields in batch.values() for c in fields]


def incompatibility(existing: Mapping[str, Any], spec: PropertySpec) -> str | None:
    """Why an existing property cannot hold our values, or None when it can be reused."""
    if existing.get("type") != spec.type:
        return f"exists with type {existing.get('type')} but retention-sync writes {spec.type}"
    values = {o.get("value") for o in existing.get("options") or []}
    missing = [o for o in spec.options if o not in values]
    if missing:
        return f"lacks the options {', '.join(missing)}"
    return None


# Canonical contact fields → HubSpot's own contact properties (kept the same as in the other tools).
CONTACT_PROPERTIES = {"first_name": "firstname", "last_name": "lastname", "phone": "phone", "company_name": "company"}


@functools.lru_cache(maxsize=1 << 12)
def _as_stored(kind: str, decimals: int | None, value: str) -> str | None:
    """A number or time as HubSpot stores it. Cached: a run compares every contact's values, and most repeat (one
    "scored at" for everyone, risks on 0.1-point steps). Customer values rarely repeat: 65,536 of them held 13.5 MB
    through a 100,000-customer run's writes, for a few percent of hits."""
    if kind == "number":
        return canonical_number(value, decimals)
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z" if moment else None


def _owners(contacts: Sequence[Contact]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Each normalised email (primary or additional) and contact id → the ids of the live contacts carrying it, a
    merged-away contact counting as its survivor (more than one owner: ambiguous, never guessed); and the
    merged-away ids → their survivor."""
    survivor_of = {old: c.source_id for c in contacts for old in c.merged_ids}
    owners: dict[str, set[str]] = {}
    for contact in contacts:
        owner = survivor_of.get(contact.source_id, contact.source_id)
        for email in (contact.email, *contact.additional_emails):
            if email is not None:
                owners.setdefault(email.normalised, set()).add(owner)
        owners.setdefault(contact.source_id, set()).add(owner)
    return owners, survivor_of


def desired_values(scores: Iterable[Score], contacts: Sequence[Contact], linked: Mapping[str, Mapping[str, str]],
                   opted_out: Mapping[str, tuple[str, ...]], names: Mapping[str, str],
                   last_nps: Mapping[str, int] | None = None) -> Iterator[tuple[str, dict[str, str | None]]]:
    """(contact id, {property: value}) one contact at a time, so a write run never holds every contact's values:
    the contact fields this account holds differently from what was decided across tools, the tools (other than
    HubSpot) where the person opted out of email, and the person's scores."""
    contacts = [c for c in contacts if c.source == "hubspot"]
    owners, survivor_of = _owners(contacts)
    scored = _scores_by_contact(scores, owners)
    for contact in contacts:
        values = _contact_field_values(contact, owners, survivor_of, linked, opted_out, names)
        score = scored.get(contact.source_id)  # owners name only these contacts (a merged id: its survivor)
        if score is not None:
            values = {**(values or {}), **_score_values(score, names, last_nps)}
        if values is not None:
            yield contact.source_id, values


def _contact_field_values(contact: Contact, owners: Mapping[str, set[str]], survivor_of: Mapping[str, str],
                          linked: Mapping[str, Mapping[str, str]], opted_out: Mapping[str, tuple[str, ...]],
                          names: Mapping[str, str]) -> dict[str, str | None] | None:
    if contact.source_id in survivor_of or contact.email is None:
        return None
    emails = [e.normalised for e in (contact.email, *contact.additional_emails) if e is not None]
    if any(len(owners[e]) > 1 for e in emails):
        return None  # shared by two contacts: reported with the scores, never guessed
    values: dict[str, str | None] = {}
    decided = next((linked[e] for e in emails if e in linked), {})
    for field_name, prop in CONTACT_PROPERTIES.items():
        if field_name in decided and decided[field_name] != (getattr(contact, field_name) or "").strip():
            values[prop] = decided[field_name]
    elsewhere = sorted({tool for e in emails for tool in opted_out.get(e, ()) if tool != "hubspot"})
    values[names["unsubscribed_in"]] = ", ".join(elsewhere) or None
    return values


def _scores_by_contact(scores: Iterable[Score], owners: Mapping[str, set[str]]) -> dict[str, Score]:
    """Each score's HubSpot contact, matched by email (primary or additional) or id; a merged-away contact is
    replaced by its survivor, so nothing is ever addressed to a dead id. An email that two distinct contacts carry
    is ambiguous: it is reported and nothing is written for it, rather than guessed."""
    scored: dict[str, Score] = {}
    ambiguous = 0
    for score in scores:
        found = owners.get(score.source_id.strip().lower()) or owners.get(score.source_id) or set()
        if len(found) > 1:
            ambiguous += 1
        elif found:
            scored[next(iter(found))] = score
    if ambiguous:
        log.warning("hubspot: %d customer(s) match more than one HubSpot contact by email and were not written; "
                    "merge the duplicate contacts in HubSpot and the next sync writes them", ambiguous)
    return scored


def _score_values(score: Score, names: Mapping[str, str], last_nps: Mapping[str, int] | None) -> dict[str, str | None]:
    sentiment = None if score.sentiment is None else sentiment_label(score.sentiment)
    values = {"churn_risk": str(score.churn_probability * 100), "risk_band": score.risk_band.value,
              "churn_reasons": "; ".join(score.top_reasons) or None, "segment": score.segment,
              "clv": None if score.clv is None else str(score.clv), "sentiment": sentiment,
              "scored_at": score.scored_at.astimezone(UTC).isoformat()}
    if last_nps is not None:  # known for everyone: None clears an answer no longer on record
        values["last_nps"] = str(last_nps[score.source_id]) if score.source_id in last_nps else None
    return {names[key]: value for key, value in values.items()}


def desired_from_scores(scores: Iterable[Score], contacts: Iterable[Contact], names: Mapping[str, str],
                        last_nps: Mapping[str, int] | None = None) -> dict[str, dict[str, str | None]]:
    """Score records → {HubSpot contact id: {property: value}}, matched as in ``desired_values``."""
    owners, _ = _owners([c for c in contacts if c.source == "hubspot"])
    return {contact_id: _score_values(score, names, last_nps)
            for contact_id, score in _scores_by_contact(scores, owners).items()}
