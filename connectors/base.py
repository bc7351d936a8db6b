"""Source and Destination protocols, the error hierarchy, and the registry of connector health checks.

The engine knows nothing vendor-specific: a source is a set of named streams that yield pages of canonical
records with the cursor *after* them; the engine persists that cursor only once the page is committed.
A destination receives the changes the ledger computed and reports, per record, what happened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from connectors.records import Contact, Record, Score
    from sync.settings import Settings


# --- errors ---------------------------------------------------------------------------------------------------


class RetentionError(Exception):
    """Anything we raise on purpose. The CLI prints it as one line; ``exit_code`` follows the documented table."""

    exit_code = 1


class ConfigError(RetentionError):
    """Settings are wrong: the message names the file or variable, the key, the value and what is allowed."""

    exit_code = 2


class InputError(RetentionError):
    """A file the user gave us cannot be used as a whole (encoding, structure, missing columns)."""

    exit_code = 3

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class StoreError(RetentionError):
    """The local state store cannot be opened or written (locked, corrupt, full, newer schema)."""

    exit_code = 4


class SourceError(RetentionError):
    """A vendor or file source failed. ``retryable`` tells the engine whether to try again later."""

    exit_code = 5

    def __init__(self, message: str, *, source: str, record_id: str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.source = source
        self.record_id = record_id
        self.retryable = retryable


class RateLimited(SourceError):
    def __init__(self, message: str, *, source: str, retry_after_s: float | None) -> None:
        super().__init__(message, source=source, retryable=True)
        self.retry_after_s = retry_after_s


class AuthError(SourceError):
    """Credentials missing, expired for good, or revoked: the user must act."""

    exit_code = 6


class RecordRejected(SourceError):
    """The vendor refused this one record: quarantine it and go on."""


class PermanentlyRejected(RecordRejected):
    """The vendor will refuse this record whatever we send (a compliance state, a forgotten address): reported
    once, never sent again."""


class InvalidRecord(ValueError):
    """A record failed validation while being built. Carries the field so the row can be quarantined precisely.

    Deliberately not a RetentionError: it is always caught by the mapping that builds records and turned into
    a quarantine entry; it never ends a run.
    """

    def __init__(self, field_name: str, value: Any, reason: str) -> None:
        self.field_name = field_name
        self.value = value
        self.reason = reason
        super().__init__(f"{field_name} {preview(value)} {reason}")


def preview(value: Any, limit: int = 60) -> str:
    """A value short enough to quote in a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}…'"


# --- sources and destinations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """Records read together, and the cursor that is true once they are committed."""

    records: Sequence[Record]
    cursor_after: str | None
    rejected: Sequence[Rejected] = ()
    deleted: Sequence[str] = ()  # source ids of this stream's kind that the source archived or deleted


@dataclass(frozen=True)
class Rejected:
    """Input that could not become a record: where it was, why, and the raw data for the quarantine."""

    record_ref: str  # "contacts.csv line 17", or the vendor's id
    reason: str
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    name: str  # "contacts"
    record_kind: str  # "contact"
    read: Callable[[str | None], Iterator[Page]]  # called with the saved cursor, or None for a full read


class Source(Protocol):
    name: str

    def streams(self) -> Sequence[Stream]: ...


@dataclass(frozen=True, slots=True)  # one per field to write: hundreds of thousands on a first sync
class Change:
    """One field the ledger decided must be written to one object in a destination."""

    object_id: str
    field_name: str
    value: str | None
    previous: str | None = None  # the last value confirmed in the target (e.g. the tag a new tag replaces)


@dataclass(frozen=True, slots=True)
class Receipt:
    change: Change
    ok: bool
    reason: str | None = None  # why the destination refused, in the vendor's words, without secrets
    permanent: bool = False  # refused for good whatever the value (PermanentlyRejected): the object is held back


@dataclass(frozen=True, slots=True)
class Held:
    """What a tool held in the fields we write to one of its objects, as the contact read stored it."""

    record: tuple[str, str]  # (source, source_id) of the contact record the values were read into
    values: Mapping[str, str | None]  # destination field → the value held, as ``coerce`` puts it (None: empty)


class Destination(Protocol):
    """A tool we write fields into. The engine diffs; the destination only reads back and applies.

    ``coerce`` turns a desired value into exactly what the target would store (rounded, typed, truncated), so
    that the engine compares like with like and never re-sends a value the target already holds.
    ``objects_per_apply`` is how many objects' changes the engine hands to one ``apply`` (one ledger batch): a
    multiple of the vendor's batch size, so a crash redoes at most that much.
    ``held`` answers from the contacts the target's ``desired`` was given (no request): the fields of ours each
    object was read holding, for the objects whose read included them. The engine trusts a value the ledger
    confirmed only while what the tool was read holding since agrees with it (a store restored from an older copy
    remembers values the tool no longer holds; a user may overwrite ours by hand).
    ``owned`` names the fields the tool created under its own names: there a value the ledger has no record of
    writing is ours all the same (written in commits a restored store lost, or typed over by hand) and is cleared
    when we have nothing to write. Any other field (one the owner mapped to a property of theirs) may hold the
    owner's data, and a value we never wrote there is left alone.
    """

    name: str
    objects_per_apply: int
    owned: frozenset[str]

    def coerce(self, field_name: str, value: str | None) -> str | None: ...

    def current(self, object_ids: Sequence[str], field_names: Sequence[str]) -> dict[str, dict[str, str | None]]: ...

    def held(self, object_ids: Sequence[str]) -> dict[str, Held]: ...

    def apply(self, changes: Sequence[Change]) -> Sequence[Receipt]: ...


# --- connections: what `retention sync` builds from the settings -----------------------------------------------

# Settings section → the module whose import registers that connector's `doctor` check and its connection.
CONNECTOR_MODULES = {
    "hubspot": "connectors.hubspot",
    "mailchimp": "connectors.mailchimp",
    "typeform": "connectors.forms.typeform",
    "surveymonkey": "connectors.forms.surveymonkey",
    "google_forms": "connectors.forms.google_forms",
}


class VendorTime:
    """How far the vendor's clock (the Date header of its answers, RFC 9110) is behind ours.

    Read cursors are vendor times. A mark taken from our clock ("everything up to a look-back before now has been
    seen") must not run ahead of the vendor's: on a computer whose clock is fast, the next read would start after
    changes the vendor stamped earlier, and skip them for good. Our clock behind theirs needs nothing: a mark from it
    is only earlier, and a read from there only re-reads."""

    TOLERANCE = timedelta(seconds=2)  # Date is in whole seconds, and an answer takes a moment to arrive

    def __init__(self) -> None:
        self.behind = timedelta(0)

    def note(self, date_header: str | None, our_now: datetime) -> None:
        """One answer's Date header, and our clock when it arrived."""
        try:
            theirs = parsedate_to_datetime(date_header) if date_header else None
        except (TypeError, ValueError):
            return  # a proxy's odd header: keep what the last answer said
        if theirs is None or theirs.tzinfo is None:
            return
        lag = our_now - theirs
        self.behind = lag if lag > self.TOLERANCE else timedelta(0)

    def at(self, ours: datetime) -> datetime:
        """The vendor's time when ours read ``ours``: never later than ``ours``."""
        return ours - self.behind


@dataclass(frozen=True)
class Endpoint:
    """Where a connector talks and with which credential, when not the vendor's own service (the demo's sandboxes)."""

    base_url: str
    credential: str


@dataclass(frozen=True)
class ScoreView:
    """What one write-back sees: this run's scores (keyed by normalised email) and the target source's contacts."""

    scores: Sequence[Score]
    contacts: Sequence[Contact]  # current (not deleted) contacts read from this connector's own source
    last_nps: Mapping[str, int]  # customer key → the NPS of their latest answer that had one
    # Contact fields decided across tools (sync.linking): person (normalised email) → canonical field → the value
    # every tool should hold. A target writes the ones its own contact lacks or holds differently.
    linked: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    opted_out: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # person → tools where they opted out


# object id → field → value; or (object id, {field: value}) pairs, streamed one object at a time
Desired = Mapping[str, Mapping[str, "str | None"]] | Iterable[tuple[str, Mapping[str, "str | None"]]]


@dataclass(frozen=True)
class Target:
    """One destination and how this run's scores become the values it should hold.

    ``companions`` are fields sent only alongside a real change of the same object (a "scored at" stamp must not
    turn an unchanged score into a write).

    ``contact_fields`` maps canonical contact fields (first_name, last_name, phone, company_name) to the
    destination's own field names: the tool takes part in keeping them the same across tools. It reads them back
    every run, so ``desired`` names them only where the tool's value differs, and the engine sends them even when
    the ledger remembers writing that very value (the user has changed it since)."""

    destination: Destination
    desired: Callable[[ScoreView], Desired]
    companions: frozenset[str] = frozenset()
    contact_fields: Mapping[str, str] = field(default_factory=dict)
    # The person (normalised email) an object id of this destination is; by default the id is the email.
    person_of: Callable[[str], str | None] = lambda object_id: object_id


@dataclass
class Connection:
    """A connected tool: what it is read from (if anything) and what is written to it."""

    name: str
    source: Source | None
    targets: Sequence[Target] = ()
    close: Callable[[], None] = lambda: None


Connect = Callable[["Settings", "Endpoint | None"], Connection]
_CONNECTS: dict[str, Connect] = {}


def register_connector(connector: str) -> Callable[[Connect], Connect]:
    """Connectors register how to build their source and targets from the settings; `retention sync` runs them."""

    def add(connect: Connect) -> Connect:
        _CONNECTS[connector] = connect
        return connect

    return add


def registered_connectors() -> dict[str, Connect]:
    return dict(_CONNECTS)


# --- health checks (`retention doctor`) -----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


ConnectorCheck = Callable[["Settings"], CheckResult]
_CHECKS: dict[str, ConnectorCheck] = {}


def register_check(connector: str) -> Callable[[ConnectorCheck], ConnectorCheck]:
    """Connectors register how to tell whether they are reachable and authorised; `doctor` runs the enabled ones."""

    def add(check: ConnectorCheck) -> ConnectorCheck:
        _CHECKS[connector] = check
        return check

    return add


def registered_checks() -> dict[str, ConnectorCheck]:
    return dict(_CHECKS)
