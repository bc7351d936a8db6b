"""MailchimpDestination: the tool's tags and merge fields on the members of one allow-listed audience.

Consent is sacred: no request sent for an existing member carries ``status`` (tags go through static segment
batches, merge fields through PATCH operations with ``merge_fields`` only, in batch operations from
``BATCH_FROM_MEMBERS`` members on), archived members are left alone, and a new
member is only added when ``add_new_contacts`` is on, with ``status_if_new`` (PUT), which Mailchimp ignores
for anyone already on the audience. Forgotten addresses are refused by Mailchimp; the refusal is a failed
receipt, which the engine remembers and does not retry until the input changes.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.base import Change, ConfigError, Held, PermanentlyRejected, Receipt, RecordRejected
from connectors.mailchimp.client import PAGE_SIZE, MailchimpClient, OperationResult, operation_refusal
from connectors.mailchimp.mapping import MERGE_FIELDS, TAG_FAMILIES, WRITABLE_MERGE_FIELDS, subscriber_hash
from connectors.records import Contact

# Below this many members merge fields go as single PATCHes: waiting for a batch costs seconds, a few PATCHes less.
BATCH_FROM_MEMBERS = 20
NOT_WRITABLE = {"archived": "is archived in Mailchimp; the tool never restores archived members"}


@dataclass(slots=True)  # one per member of the audience: 100k on a large list
class Member:
    member_hash: str
    status: str
    tags: set[str] = field(default_factory=set)


class MailchimpDestination:
    def __init__(self, client: MailchimpClient, list_id: str) -> None:
        if list_id not in client.settings.audiences:
            raise ConfigError(
                f"mailchimp: audience {list_id} is not in mailchimp.audiences; add it there to write to it"
            )
        self.client = client
        self.settings = client.settings
        self.list_id = list_id
        self.name = f"mailchimp/{list_id}"
        self.prefix = self.settings.tag_prefix
        # Segment batches are idempotent sets, so a large apply costs nothing on a crash and keeps calls minimal.
        self.objects_per_apply = self.settings.batch_size * 100
        self.owned = frozenset([*TAG_FAMILIES, *MERGE_FIELDS])  # our tag families and our three merge fields
        self._directory: dict[str, Member] | None = None
        self._read: dict[str, Contact] = {}  # email → the member as the store holds it from the reads (``held``)
        self._segments: dict[str, int] | None = None
        self._merge_fields_ready = False
        self.write_calls = 0  # requests that may change the audience, for the bench and the report
        self._count_lock = threading.Lock()

    # --- the Destination protocol ---------------------------------------------------------------------------------

    def coerce(self, field_name: str, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if field_name in TAG_FAMILIES:
            return value.strip().lower()
        if field_name not in WRITABLE_MERGE_FIELDS:
            raise ConfigError(
                f"mailchimp: unknown field {field_name!r}; use {', '.join([*TAG_FAMILIES, *WRITABLE_MERGE_FIELDS])}"
            )
        if WRITABLE_MERGE_FIELDS[field_name][1] == "number":
            return _number(value)
        return value.strip()[:255]  # Mailchimp: text merge fields hold 255 characters

    def current(self, object_ids: Sequence[str], field_names: Sequence[str]) -> dict[str, dict[str, str | None]]:
        # The engine reads back what an interrupted run may have written. A batch it submitted may not have run yet:
        # read before it finishes, its members look unwritten, their intents are dropped and sent again (and the
        # late batch may then overwrite a newer value). So the members are read once no batch is still running.
        self.client.wait_for_unfinished_batches()

        def read(email: str) -> tuple[str, dict[str, Any] | None]:
            try:
                return email, self.client.call(
                    "reading a member back",
                    self.client.sdk.lists.get_list_member,
                    self.list_id,
                    subscriber_hash(email),
                    fields=["tags,merge_fields,status"],
                    member=email,
                )
            except RecordRejected:
                return email, None  # not on the audience: nothing of ours is there

        found: dict[str, dict[str, str | None]] = {}
        for email, member in self.client.map(read, object_ids):
            if member is None:
                continue
            tags = {t["name"] for t in member.get("tags") or []}
            values: dict[str, str | None] = {}
            for name in field_names:
                if name in TAG_FAMILIES:
                    values[name] = next(iter(sorted(self._family_tags(tags, name))), None)
                elif name in WRITABLE_MERGE_FIELDS:
                    values[name] = self._held_merge_field(name, str(member.get("merge_fields", {}).get(name, "")))
            found[email] = values
        return found

    def held(self, object_ids: Sequence[str]) -> dict[str, Held]:
        found = {}
        for email in object_ids:
            contact = self._read.get(email)
            if contact is None:
                continue
            tags = {tag for tag in contact.properties.get("tags", "").split(",") if tag}
            # More than one tag of a family (left by a lost run, or a user) is held as all of them: it equals no
            # single value we write, so the family is written again, which removes the others.
            values = {name: self.coerce(name, ",".join(sorted(self._family_tags(tags, name)))) for name in TAG_FAMILIES}
            for name in MERGE_FIELDS:
                values[name] = self._held_merge_field(name, contact.properties.get(f"merge_{name}"))
            found[email] = Held((contact.source, contact.source_id), values)
        return found

    def _held_merge_field(self, name: str, value: str | None) -> str | None:
        try:
            return self.coerce(name, value)
        except ConfigError:  # not a number in a field we write numbers to: not ours, so it differs from ours as it is
            return value

    def apply(self, changes: Sequence[Change]) -> Sequence[Receipt]:
        directory = self._load_directory()
        receipts: list[Receipt] = []
        by_email: dict[str, list[Change]] = {}
        for change in changes:
            by_email.setdefault(change.object_id.strip().lower(), []).append(change)
        writable: dict[str, list[Change]] = {}
        for email, wanted in by_email.items():
            member = directory.get(email)
            if member is None and not self.settings.add_new_contacts:
                reason = f"{email} is not on audience {self.list_id}; new members are only added with mailchimp.add_new_contacts = true"
                receipts.extend(Receipt(c, False, reason) for c in wanted)
            elif member is not None and member.status in NOT_WRITABLE:
                receipts.extend(Receipt(c, False, f"{email} {NOT_WRITABLE[member.status]}") for c in wanted)
            else:
                writable[email] = wanted
        existing = {e: c for e, c in writable.items() if e in directory}
        receipts.extend(self._add_new_members({e: c for e, c in writable.items() if e not in directory}))
        receipts.extend(self._write_tags(existing))
        receipts.extend(self._write_merge_fields(existing))
        return receipts

    # --- members ----------------------------------------------------------------------------------------------------

    def know_members(self, contacts: Iterable[Contact]) -> None:
        """Take the audience's members (hash, status, tags) from the members the source read this run, instead of
        reading the whole audience again before the first write (100 calls for 100k members, on every run); and
        what they hold in our tags and merge fields, for ``held``. Told a part of the audience at a time, it adds
        those not known yet (one known already holds what our writes have changed since it was read: its tags);
        ``held`` answers from the current part's (the engine asks as each object comes)."""
        prefix = f"{self.list_id}/"
        self._read = {contact.email.normalised: contact for contact in contacts
                      if contact.source_id.startswith(prefix) and contact.email is not None}
        directory = self._directory if self._directory is not None else {}
        for email, contact in self._read.items():
            if email not in directory:
                directory[email] = Member(contact.source_id.removeprefix(prefix),
                                          sys.intern(contact.properties.get("mailchimp_status", "")),
                                          _tags(contact.properties.get("tags", "").split(",")))
        self._directory = directory

    def _load_directory(self) -> dict[str, Member]:
        """Every member's hash, status and tags, read once per destination (100 calls for 100k members) unless
        ``know_members`` was told them."""
        if self._directory is None:

            def fetch(offset: int) -> dict[str, Any]:
                return self.client.call(
                    f"reading members of audience {self.list_id}",
                    self.client.sdk.lists.get_list_members_info,
                    self.list_id,
                    count=PAGE_SIZE,
                    offset=offset,
                    fields=["members.id,members.email_address,members.status,members.tags,total_items"],
                )

            first = fetch(0)
            directory: dict[str, Member] = {}
            # Page by page as they arrive: holding every page's JSON at once cost 100 MB at 100k members.
            for page in itertools.chain(
                [first], self.client.map(fetch, range(PAGE_SIZE, int(first.get("total_items", 0)), PAGE_SIZE))
            ):
                for m in page.get("members", []):
                    directory[m["email_address"].strip().lower()] = Member(
                        m["id"], sys.intern(m["status"]), _tags(t["name"] for t in m.get("tags") or [])
                    )
            self._directory = directory
        return self._directory

    def _add_new_members(self, new: dict[str, list[Change]]) -> list[Receipt]:
        """PUT with status_if_new only: Mailchimp applies it to people not on the audience and to nobody else."""

        def add(item: tuple[str, list[Change]]) -> list[Receipt]:
            email, wanted = item
            merge = {c.field_name: _merge_value(c) for c in wanted if c.field_name in WRITABLE_MERGE_FIELDS}
            body: dict[str, Any] = {
                "email_address": email,
                "status_if_new": self.settings.status_if_new,
            }
            if merge:
                body["merge_fields"] = merge
            try:
                self._count_write()
                created = self.client.call(
                    "adding a new member",
                    self.client.sdk.lists.set_list_member,
                    self.list_id,
                    subscriber_hash(email),
                    body,
                    member=email,
                )
            except RecordRejected as exc:
                return [Receipt(c, False, str(exc), permanent=isinstance(exc, PermanentlyRejected)) for c in wanted]
            assert self._directory is not None
            self._directory[email] = Member(created["id"], created["status"], set())
            return [Receipt(c, True) for c in wanted if c.field_name in WRITABLE_MERGE_FIELDS]

        if not new:
            return []
        self._ensure_merge_fields()
        receipts = [r for batch in self.client.map(add, new.items()) for r in batch]
        added = {e: c for e, c in new.items() if self._directory and e in self._directory}
        return receipts + self._write_tags(added)

    # --- tags through static segments ------------------------------------------------------------------------------

    def _family_tags(self, tags: set[str], field_name: str) -> set[str]:
        family = f"{self.prefix}{TAG_FAMILIES[field_name]}-"
        return {t for t in tags if t.startswith(family)}

    def _write_tags(self, members: dict[str, list[Change]]) -> list[Receipt]:
        """Group every tag change by tag: one segment call carries up to 500 adds and 500 removes."""
        assert self._directory is not None
        adds: dict[str, list[tuple[str, Change]]] = {}
        removes: dict[str, set[str]] = {}
        for email, wanted in members.items():
            held = self._directory[email].tags
            for change in (c for c in wanted if c.field_name in TAG_FAMILIES):
                # Drop the family's other tags of ours (the confirmed previous one, and any left by a lost run).
                for old in (
                    self._family_tags(held, change.field_name) | {change.previous}
                    if change.previous
                    else self._family_tags(held, change.field_name)
                ) - {change.value, None}:
                    removes.setdefault(old, set()).add(email)
                if change.value is not None:
                    adds.setdefault(change.value, []).append((email, change))
        cleared = [(e, c) for e, w in members.items() for c in w if c.field_name in TAG_FAMILIES and c.value is None]
        failed: dict[tuple[str, str], str] = {}
        calls = []
        for tag in sorted(set(adds) | set(removes)):
            tag_adds, tag_removes = (
                [e for e, _ in adds.get(tag, [])],
                sorted(removes.get(tag, ())),
            )
            step = self.settings.batch_size
            for start in range(0, max(len(tag_adds), len(tag_removes)), step):
                calls.append(
                    (
                        tag,
                        tag_adds[start : start + step],
                        tag_removes[start : start + step],
                    )
                )
        # Create missing tags first, one by one: parallel calls for the same new tag would each try to create it.
        for tag in sorted({tag for tag, to_add, _ in calls if to_add} - set(self._segment_ids() if calls else ())):
            self._create_segment(tag)
        for tag, refused in self.client.map(self._segment_call, calls):
            for email, reason in refused.items():
                failed[(email, tag)] = reason
        receipts = []
        for tag, pairs in adds.items():
            for email, change in pairs:
                reason = failed.get((email, tag))
                receipts.append(Receipt(change, reason is None, reason))
                if reason is None:
                    self._directory[email].tags = (
                        self._directory[email].tags - self._family_tags(self._directory[email].tags, change.field_name)
                    ) | {tag}
        for email, change in cleared:
            self._directory[email].tags -= self._family_tags(self._directory[email].tags, change.field_name)
            receipts.append(Receipt(change, True))
        return receipts

    def _segment_call(self, call: tuple[str, list[str], list[str]]) -> tuple[str, dict[str, str]]:
        tag, to_add, to_remove = call
        segment_id = self._segment_ids().get(tag)
        if segment_id is None:
            return (
                tag,
                {},
            )  # removing a tag that does not exist on the audience: nobody holds it
        body = {"members_to_add": to_add, "members_to_remove": to_remove}
        self._count_write()
        result = self.client.call(
            f"updating tag {tag}",
            self.client.sdk.lists.batch_segment_members,
            body,
            self.list_id,
            str(segment_id),
        )
        refused: dict[str, str] = {}
        for error in result.get("errors") or []:
            for email in error.get("email_addresses") or []:
                refused[email.strip().lower()] = f"mailchimp refused tag {tag} for member {email}: {error.get('error')}"
        return tag, refused

    def _segment_ids(self) -> dict[str, int]:
        """Tag name → static segment id (Mailchimp tags are static segments)."""
        if self._segments is None:
            found: dict[str, int] = {}
            offset = 0
            while True:
                body = self.client.call(
                    "reading tags",
                    self.client.sdk.lists.list_segments,
                    self.list_id,
                    type="static",
                    count=PAGE_SIZE,
                    offset=offset,
                )
                found.update({s["name"]: s["id"] for s in body.get("segments", [])})
                offset += len(body.get("segments", []))
                if not body.get("segments") or offset >= int(body.get("total_items", 0)):
                    break
            self._segments = found
        return self._segments

    def _create_segment(self, tag: str) -> int:
        self._count_write()
        created = self.client.call(
            f"creating tag {tag}",
            self.client.sdk.lists.create_segment,
            self.list_id,
            {"name": tag, "static_segment": []},
        )
        self._segment_ids()[tag] = created["id"]
        return created["id"]

    # --- merge fields -----------------------------------------------------------------------------------------------

    def _ensure_merge_fields(self) -> None:
        if self._merge_fields_ready:
            return
        body = self.client.call(
            "reading merge fields",
            self.client.sdk.lists.get_list_merge_fields,
            self.list_id,
            count=PAGE_SIZE,
        )
        have = {f["tag"] for f in body.get("merge_fields", [])}
        for tag, (label, kind) in WRITABLE_MERGE_FIELDS.items():
            if tag not in have:
                self._count_write()
                body: dict[str, Any] = {"tag": tag, "name": label, "type": kind, "required": False, "public": False}
                if kind == "phone":
                    body["options"] = {"phone_format": "International"}  # "US" would refuse every other number
                self.client.call(f"creating merge field {tag}", self.client.sdk.lists.add_list_merge_field, self.list_id, body)
        self._merge_fields_ready = True

    def _write_merge_fields(self, members: dict[str, list[Change]]) -> list[Receipt]:
        todo = {e: [c for c in w if c.field_name in WRITABLE_MERGE_FIELDS] for e, w in members.items()}
        todo = {e: w for e, w in todo.items() if w}
        if not todo:
            return []
        self._ensure_merge_fields()
        if len(todo) < BATCH_FROM_MEMBERS:
            return [r for batch in self.client.map(self._patch_merge_fields, todo.items()) for r in batch]
        return self._batch_merge_fields(todo)

    def _patch_merge_fields(self, item: tuple[str, list[Change]]) -> list[Receipt]:
        email, wanted = item
        try:
            self._count_write()
            self.client.call(
                "writing merge fields",
                self.client.sdk.lists.update_list_member,
                self.list_id,
                subscriber_hash(email),
                _merge_body(wanted),
                member=email,
            )
        except RecordRejected as exc:
            return [Receipt(c, False, str(exc), permanent=isinstance(exc, PermanentlyRejected)) for c in wanted]
        return [Receipt(c, True) for c in wanted]

    def _batch_merge_fields(self, todo: dict[str, list[Change]]) -> list[Receipt]:
        """PATCH operations in batches of ``batch_size``; an operation that failed on Mailchimp's side (5xx, 429,
        no result) goes once more in a later batch, then is refused with the reason."""
        receipts: list[Receipt] = []
        pending = todo
        failures: dict[str, OperationResult | None] = {}
        for _ in range(2):
            by_hash = {subscriber_hash(email): email for email in pending}
            outcomes = self.client.run_batches(self._operation_batches(by_hash, pending))
            retry: dict[str, list[Change]] = {}
            for member_hash, email in by_hash.items():
                outcome, wanted = outcomes.get(member_hash), pending[email]
                if outcome is not None and outcome.is_ok:
                    receipts.extend(Receipt(c, True) for c in wanted)
                elif outcome is not None and not outcome.is_transient:
                    refused = operation_refusal(outcome, "writing merge fields", email)
                    permanent = isinstance(refused, PermanentlyRejected)
                    receipts.extend(Receipt(c, False, str(refused), permanent=permanent) for c in wanted)
                else:
                    retry[email], failures[email] = wanted, outcome
            pending = retry
            if not pending:
                break
        for email, wanted in pending.items():
            outcome = failures[email]
            reason = (
                f"{operation_refusal(outcome, 'writing merge fields', email)} (in two batches)"
                if outcome is not None
                else f"mailchimp gave no result for writing merge fields for member {email} in two batches"
            )
            receipts.extend(Receipt(c, False, reason) for c in wanted)
        return receipts

    def _operation_batches(
        self, by_hash: dict[str, str], wanted: dict[str, list[Change]]
    ) -> Iterator[list[dict[str, Any]]]:
        """Lists of at most ``batch_size`` PATCH operations, made as the client asks for them; each counts one write."""
        hashes = list(by_hash)
        for start in range(0, len(hashes), self.settings.batch_size):
            self._count_write()
            yield [
                {
                    "method": "PATCH",
                    "path": f"/lists/{self.list_id}/members/{member_hash}",
                    "operation_id": member_hash,
                    "body": json.dumps(_merge_body(wanted[by_hash[member_hash]])),
                }
                for member_hash in hashes[start : start + self.settings.batch_size]
            ]

    def _count_write(self) -> None:
        with self._count_lock:
            self.write_calls += 1


def _tags(names: Iterable[str]) -> set[str]:
    """A member's tags, each name held once for the whole audience: a few dozen names among 100,000 members, whose
    directory held 20 MB more with a string per member and tag (three tags each), and the status likewise."""
    return {sys.intern(name) for name in names if name}


def _number(value: str) -> str:
    """What Mailchimp stores for a number merge field, as we read it back."""
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"mailchimp: {value!r} is not a number for a number merge field") from None
    return str(int(number)) if number.is_integer() else str(round(number, 2))


def _merge_body(wanted: list[Change]) -> dict[str, Any]:
    # merge_fields only: a PATCH without status cannot change anyone's subscription.
    return {"merge_fields": {c.field_name: _merge_value(c) for c in wanted}}


def _merge_value(change: Change) -> Any:
    if change.value is None:
        return ""
    if WRITABLE_MERGE_FIELDS[change.field_name][1] == "number":
        number = float(change.value)
        return int(number) if number.is_integer() else number
    return change.value
