"""What a sync's targets are shown: ScoreViews, a part of the people at a time.

A write run compares every person's desired values with the ledger. Holding every contact of both tools (about
170 MB at 100,000 customers), every score (85 MB) and every person's linked contact fields at once made the writes
the peak of a sync, so the people are taken a few thousand at a time, in sorted order. Each part comes with every contact linked to its people in any writing
tool, and everyone those contacts are linked to in turn (``Store.contacts_of``): a whole, so the contact fields
decided across tools and a destination's check for an email two contacts share see all they need, and no contact
and no person is in two parts (a person an earlier part took in is skipped when the sorted order reaches them).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from connectors.base import Connection, ScoreView
from connectors.records import Contact, Score, from_payload
from sync.linking import AGREED_PEOPLE_AT_ONCE, CONTACT_FIELDS, Linked, agreed_values, link_contacts, remember_agreed
from sync.scoring_stage import Scored
from sync.settings import Settings
from sync.store import Store

PEOPLE_AT_ONCE = 2_000  # people whose contacts, linked fields and scores a write run holds at once (tests lower it)


@dataclass
class Part:
    number: int  # the same part has the same number in every tool's writes
    people: set[str]  # normalised emails and contact ids, of the part's people and of everyone linked to them
    contacts: dict[str, list[Contact]]  # tool → its contacts linked to them


class People:
    """Everyone a run's writes may concern, and their scores, handed out a part at a time (the same parts to
    every tool, which reads them on its own)."""

    def __init__(self, store: Store, writing: Sequence[Connection], scored: Scored, people: set[str] | None) -> None:
        """``people``: only those changed since the last complete write run; None for everyone the writing tools
        hold and everyone scored. Scores kept in the store are read back a part at a time rather than all held
        through the writes (85 MB at 100,000 customers)."""
        self.store = store
        self.sources = {c.name: c.source.name for c in writing if c.source is not None}
        if people is None:
            people = self.store.emails_of(list(self.sources.values()))
            people.update(scored.customers)
        self.keys = sorted(people)
        # Every score of a run has the one source and time (as_of): a score in the store with another is not this run's.
        self._scored = scored.run
        self._held = scored.records

    def parts(self) -> Iterator[Part]:
        """The people a part at a time, each with its contacts; every run of this yields the same parts."""
        taken: set[str] = set()  # people an earlier part took in, that come later in the sorted keys
        for start in range(0, len(self.keys), PEOPLE_AT_ONCE):
            last = self.keys[min(start + PEOPLE_AT_ONCE, len(self.keys)) - 1]
            part = {key for key in self.keys[start : start + PEOPLE_AT_ONCE] if key not in taken}
            taken = {person for person in taken if person > last}
            if not part:
                continue
            found = self.store.contacts_of(list(self.sources.values()), part)
            contacts = {tool: [from_payload("contact", payload) for _, payload in found[source]]
                        for tool, source in self.sources.items()}
            people = part | {e.normalised for held in contacts.values() for c in held
                             for e in (c.email, *c.additional_emails) if e is not None}
            people |= {c.source_id for held in contacts.values() for c in held}
            taken |= {person for person in people if person > last and self._is_key(person)}
            yield Part(start // PEOPLE_AT_ONCE, people, contacts)

    def scores_of(self, people: set[str]) -> list[Score]:
        """The scores of ``people`` (customer keys: normalised emails or contact ids)."""
        if self._scored is None:
            return []
        if self._held is not None:
            return [s for s in self._held if s.source_id in people or s.source_id.strip().lower() in people]
        source, scored_at = self._scored
        found = (from_payload("score", payload) for _, payload in self.store.records_named("score", source, people))
        return [score for score in found if score.scored_at == scored_at]

    def _is_key(self, person: str) -> bool:
        at = bisect.bisect_left(self.keys, person)
        return at < len(self.keys) and self.keys[at] == person


class Agreement:
    """Contact fields decided across the tools that share them, a part at a time. What was read agreeing is
    remembered once per part (not in a dry run), by whichever tool's writes reach the part first: the other decides
    the same either way, as a value is only remembered where every tool already holds it (sync.linking)."""

    def __init__(self, settings: Settings, store: Store, writing: Sequence[Connection], dry_run: bool) -> None:
        self.store, self.dry_run = store, dry_run
        tools = [c.name for c in writing if c.source is not None and any(t.contact_fields for t in c.targets)]
        self.tools = tools if len(tools) > 1 else []
        self.fields = [name for name in CONTACT_FIELDS if name in settings.sync.contact_fields]
        self._lock = threading.Lock()
        self._counted: dict[int, tuple[int, int]] = {}  # part number → (people decided, fields both tools changed)

    def link(self, part: Part) -> Linked:
        if not self.tools:
            return Linked()
        some = sorted(part.people)
        known = {key: value for start in range(0, len(some), AGREED_PEOPLE_AT_ONCE)
                 for key, value in agreed_values(self.store, some[start : start + AGREED_PEOPLE_AT_ONCE]).items()}
        linked = link_contacts({tool: part.contacts[tool] for tool in self.tools}, known, self.fields)
        with self._lock:
            first = part.number not in self._counted
            self._counted.setdefault(part.number, (len(linked.values), linked.conflicts))
        if first and not self.dry_run:
            remember_agreed(self.store, linked.agreed, known)
        linked.agreed = {}  # remembered
        return linked

    def summary(self) -> str:
        """One line for the report: what linking found in the parts the writes reached."""
        if not self.tools:
            return ""
        people = sum(decided for decided, _ in self._counted.values())
        conflicts = sum(changed for _, changed in self._counted.values())
        return (f"contact fields ({', '.join(self.fields) or 'none'}) compared across {' and '.join(self.tools)}: "
                f"{people:,} {'person' if people == 1 else 'people'}, {conflicts:,} changed in two tools (latest change won)")


def views(people: People, agreement: Agreement, tool: str, last_nps: Mapping[str, int]) -> Iterator[ScoreView]:
    """What ``tool``'s targets see, a part of the people at a time."""
    for part in people.parts():
        linked = agreement.link(part)
        yield ScoreView(people.scores_of(part.people), part.contacts.get(tool, []), last_nps, linked.values, linked.opted_out)
