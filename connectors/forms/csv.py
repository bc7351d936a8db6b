"""CSV import: contacts, orders and survey responses from any tool's export, streamed, never held whole.

Policy for partly bad files (README, "Importing CSV files"):
- File-level problems reject the whole file and nothing is stored: an encoding that is not UTF-8/UTF-16 (unless
  ``--encoding`` names it), an unclosed quote, a column we need appearing twice, no column to identify records,
  dates that read both ways, or more bad rows than ``csv.max_bad_row_fraction`` (and more than 10).
- Row-level problems quarantine that row with its line number and reason, and the rest is imported: ragged rows,
  invalid emails, values that do not parse, rows missing a required value.
- Rows that share an identity (the id column, or the email for contacts without one) merge into one record:
  non-empty cells fill in, and a later non-empty cell replaces an earlier one. Files without an id column are
  logs: identical rows there are separate orders or responses.
Cells are stored literally: a value that looks like a spreadsheet formula is data, never evaluated.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import charset_normalizer

from connectors.base import InputError, InvalidRecord, Page, Rejected, Stream
from connectors.forms import csv_mapping as m
from connectors.records import Answer, Contact, EmailAddress, Order, SurveyResponse

KINDS = {"contacts": "contact", "orders": "order", "responses": "survey_response"}
PAGE_SIZE = 2_000
CHUNK_BYTES = 1 << 20
# A file is rejected whole only when its bad rows exceed csv.max_bad_row_fraction *and* this many: a few bad
# rows in a small file are the user's to fix one by one, not a sign that the whole mapping is wrong.
MIN_BAD_ROWS_TO_REJECT = 10
MAX_FIELD_CHARS = 64 * 1024 * 1024  # parse anything up to this; per-value limits are applied to the record
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class ImportPlan:
    """What pass one learned; shown to the user before any record is written."""

    encoding: str = "utf-8"
    delimiter: str = ","
    headers: list[str] = field(default_factory=list)
    mapping: dict[str, int] = field(default_factory=dict)  # canonical field -> column
    answer_columns: dict[int, m.AnswerType] = field(default_factory=dict)
    profile: str | None = None
    header_rows: int = 1
    date_order: str = "auto"
    data_rows: int = 0
    notices: list[str] = field(default_factory=list)
    duplicate_keys: dict[int, int] = field(default_factory=dict)  # hash of a repeated key -> rows sharing it


class CsvImport:
    """A Source with one stream: the rows of one CSV export as canonical records."""

    def __init__(
        self,
        path: Path,
        kind: str,
        *,
        zone: ZoneInfo,
        currency: str,
        date_order: str = "auto",
        max_text_chars: int = 1_048_576,
        max_bad_row_fraction: float = 0.1,
        overrides: dict[str, str] | None = None,
        encoding: str | None = None,
        source_name: str | None = None,
        form_id: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        if kind not in KINDS:
            raise InputError(f"--kind must be one of {', '.join(KINDS)} (got {kind!r})")
        self.path = path
        self.kind = kind
        self.zone = zone
        self.currency = currency
        self.max_text_chars = max_text_chars
        self.max_bad_row_fraction = max_bad_row_fraction
        self.overrides = overrides or {}
        self.form_id = form_id or path.stem
        self.on_progress = on_progress or (lambda phase, done, total: None)
        self.plan = ImportPlan(date_order=date_order)
        self.label = path.name
        self._explicit_encoding = encoding
        self._source_name = source_name
        self.rejected_rows = 0

    @property
    def name(self) -> str:
        if self._source_name:
            return self._source_name
        # A recognised tool shares one id space across its exports; a generic file is its own source, named
        # after the file without a trailing date or counter, so next month's export updates the same records.
        if self.plan.profile:
            return f"csv:{self.plan.profile}"
        stem = re.sub(r"([ _.-]*(\d{4}[-_]?\d{2}([-_]?\d{2})?|\(\d+\)|\d+))+$", "", self.path.stem) or self.path.stem
        return f"csv:{stem.lower()}"

    def streams(self) -> list[Stream]:
        return [Stream(name=self.kind, record_kind=KINDS[self.kind], read=self.read)]

    # --- pass zero and one: is this file usable at all? -------------------------------------------------------

    def prepare(self) -> ImportPlan:
        """Check encoding and structure, map the headers, learn the columns. Raises InputError for the file."""
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file", path=str(self.path))
        if self.path.stat().st_size == 0:
            self.plan.notices.append(f"{self.label}: the file is empty; nothing to import")
            return self.plan
        self.plan.encoding = _detect_encoding(self.path, self._explicit_encoding)
        _check_decodes(self.path, self.plan.encoding)
        with self._open() as handle:
            self.plan.delimiter = _detect_delimiter(handle.read(65_536))
        rows = self._rows()
        first = next(rows, None)
        if first is None:
            self.plan.notices.append(f"{self.label}: the file has no rows; nothing to import")
            return self.plan
        _, header = first
        if m.detect_profile(self.kind, {m.header_key(h) for h in header}) == m.SURVEYMONKEY:
            header = _merge_surveymonkey_headers(header, next(rows, (0, []))[1])
            self.plan.header_rows = 2
        self._set_headers(header, rows)
        self._scan(rows)
        return self.plan

    def _set_headers(self, header: list[str], rows: Iterator[tuple[int, list[str]]]) -> None:
        headers = [cell.replace("\x00", "").strip() for cell in header]
        keys = [m.header_key(h) for h in headers]
        profile = m.detect_profile(self.kind, set(keys))
        self.plan.profile = profile.name if profile else None
        for column, field_name in self.overrides.items():
            if m.header_key(column) not in keys:
                raise InputError(f"--map {column}={field_name}: {self.label} has no column {column!r}; its columns are: {', '.join(headers)}")
            allowed = m.FIELDS[self.kind] + (("ignore",) + m.ANSWER_TYPES if self.kind == "responses" else ("ignore",))
            if field_name not in allowed and not field_name.startswith("rating:"):
                raise InputError(f"--map {column}={field_name}: {field_name!r} is not a {self.kind} field; use one of {', '.join(allowed)}")
        self.plan.mapping = m.map_headers(self.kind, headers, self.overrides, profile)
        for field_name, column in self.plan.mapping.items():
            repeats = [i + 1 for i, key in enumerate(keys) if key == keys[column]]
            if len(repeats) > 1:
                raise InputError(
                    f"{self.label} line 1: the column {headers[column]!r} appears {len(repeats)} times (columns "
                    f"{', '.join(map(str, repeats))}), so the {field_name} can't be told apart — rename or remove the extra ones",
                    path=str(self.path), line=1,
                )
        seen: dict[str, int] = {}
        for index, key in enumerate(keys):  # repeated columns we do not map are kept, numbered
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                headers[index] = f"{headers[index]} ({seen[key]})"
        self.plan.headers = headers
        self._require_columns()
        self._utc_columns = bool(profile and profile.utc_columns) or any("(utc)" in k for k in keys)

    def _require_columns(self) -> None:
        mapped = self.plan.mapping
        columns = ", ".join(self.plan.headers)
        if self.kind == "contacts" and not {"email", "id"} & mapped.keys():
            raise InputError(f"{self.label}: no email or contact-id column found (columns: {columns}) — name one with --map COLUMN=email")
        if self.kind == "orders":
            for needed, hint in (("amount", "amount"), ("created_at", "created_at")):
                if needed not in mapped:
                    raise InputError(f"{self.label}: no {needed.replace('_', ' ')} column found (columns: {columns}) — name it with --map COLUMN={hint}")
            if not {"email", "customer_id"} & mapped.keys():
                raise InputError(f"{self.label}: no customer email or customer id column (columns: {columns}) — name one with --map COLUMN=email")
        if self.kind == "responses" and "submitted_at" not in mapped:
            raise InputError(f"{self.label}: no submission time column (columns: {columns}) — name it with --map COLUMN=submitted_at")

    def _scan(self, rows: Iterator[tuple[int, list[str]]]) -> None:
        plan = self.plan
        date_columns = [c for f, c in plan.mapping.items() if f in m.DATE_FIELDS]
        answer_columns = self._answer_column_indexes()
        stats = {column: m.ColumnStats() for column in answer_columns}
        evidence: dict[str, int] = {}
        key_counts: dict[int, int] = {}
        for line, cells in rows:
            if _is_blank(cells):
                continue
            plan.data_rows += 1
            for column in date_columns:
                if column < len(cells) and (seen := m.slash_date_evidence(cells[column])):
                    evidence.setdefault(seen, line)
            for column in answer_columns:
                if column < len(cells):
                    stats[column].add(cells[column].strip())
            key = self._key_hint(cells)
            if key is not None:
                key_counts[key] = key_counts.get(key, 0) + 1
            if plan.data_rows % 50_000 == 0:
                self.on_progress("checking", plan.data_rows, 0)
        plan.duplicate_keys = {key: count for key, count in key_counts.items() if count > 1}
        self._decide_date_order(evidence)
        for column in answer_columns:
            override = self.overrides.get(plan.headers[column]) or self.overrides.get(_original(plan.headers[column]))
            plan.answer_columns[column] = m.type_answer_column(plan.headers[column], stats[column], override)
        if plan.data_rows == 0:
            plan.notices.append(f"{self.label}: only a header row; nothing to import")

    def _decide_date_order(self, evidence: dict[str, int]) -> None:
        if self.plan.date_order != "auto":
            return
        if "DMY" in evidence and "MDY" in evidence:
            raise InputError(
                f"{self.label}: dates read day-first on line {evidence['DMY']} and month-first on line {evidence['MDY']}"
                " — fix the export so one column uses one format", path=str(self.path), line=evidence["DMY"],
            )
        for order in ("DMY", "MDY"):
            if order in evidence:
                self.plan.date_order = order
                self.plan.notices.append(f"{self.label}: dates read as {'day/month' if order == 'DMY' else 'month/day'}/year (line {evidence[order]} can only be read that way)")
                return
        if "ambiguous" in evidence:
            raise InputError(
                f"{self.label} line {evidence['ambiguous']}: dates like 03/05/2024 read both as day/month and month/day"
                " — run again with --date-order DMY or --date-order MDY", path=str(self.path), line=evidence["ambiguous"],
            )

    def _answer_column_indexes(self) -> list[int]:
        if self.kind != "responses":
            return []
        used = set(self.plan.mapping.values())
        ignored = {m.header_key(c) for c, f in self.overrides.items() if f == "ignore"}
        return [
            i for i, h in enumerate(self.plan.headers)
            if i not in used and h and m.header_key(h) not in m.RESPONSE_METADATA and m.header_key(h) not in ignored
        ]

    def _key_hint(self, cells: list[str]) -> int | None:
        """The row's identity as pass one sees it (cheap), or None for log-style files where rows never merge."""
        for field_name in ("id", "email") if self.kind == "contacts" else ("id",):
            column = self.plan.mapping.get(field_name)
            if column is not None and column < len(cells) and (value := _clean_id(cells[column])):
                return hash((field_name, value.lower()))
        return None

    # --- pass two: records ------------------------------------------------------------------------------------

    def read(self, cursor: str | None = None) -> Iterator[Page]:
        """Yield pages of records; a CSV has no cursor, so re-reading the same file is idempotent instead."""
        plan = self.plan
        if not plan.headers or plan.data_rows == 0:
            return
        pending: dict[int, tuple[list[int], dict[int, str]]] = {}
        remaining = dict(plan.duplicate_keys)
        occurrences: dict[str, int] = {}
        records: list[Any] = []
        rejected: list[Rejected] = []
        done = 0
        rows = self._rows()
        for _ in range(plan.header_rows):
            next(rows)
        for line, cells in rows:
            if _is_blank(cells):
                continue
            done += 1
            problem = self._row_problem(cells)
            key = self._key_hint(cells)
            if problem:
                rejected.append(Rejected(f"{self.label} line {line}", problem, self._raw(cells)))
            elif key in remaining:
                lines, merged = pending.setdefault(key, ([], {}))
                lines.append(line)
                merged.update({i: cell for i, cell in enumerate(cells) if cell.strip()})
            else:
                self._build([line], cells, occurrences, records, rejected)
            if key in remaining:
                remaining[key] -= 1
                if remaining[key] == 0 and key in pending:
                    self._build_merged(*pending.pop(key), occurrences, records, rejected)
            if len(records) + len(rejected) >= PAGE_SIZE:
                self.rejected_rows += len(rejected)
                yield Page(records=records, cursor_after=None, rejected=rejected)
                records, rejected = [], []
                self.on_progress("importing", done, plan.data_rows)
        for lines, merged in pending.values():  # a group whose other rows were ragged
            self._build_merged(lines, merged, occurrences, records, rejected)
        self.rejected_rows += len(rejected)
        bad_limit = max(self.max_bad_row_fraction * plan.data_rows, MIN_BAD_ROWS_TO_REJECT)
        if self.rejected_rows > bad_limit:
            first = rejected[0] if rejected else None
            raise InputError(
                f"{self.label}: {self.rejected_rows:,} of {plan.data_rows:,} rows could not be imported, more than "
                f"csv.max_bad_row_fraction ({self.max_bad_row_fraction:.0%}); nothing was imported — check the column "
                f"mapping with --map{f' (e.g. {first.record_ref}: {first.reason})' if first else ''}",
                path=str(self.path),
            )
        yield Page(records=records, cursor_after=None, rejected=rejected)
        self.on_progress("importing", done, plan.data_rows)

    def _row_problem(self, cells: list[str]) -> str | None:
        width = len(self.plan.headers)
        if len(cells) > width and not any(c.strip() for c in cells[width:]):
            del cells[width:]  # trailing empty cells, as spreadsheets write them
        if len(cells) != width:
            return f"has {len(cells)} cells but the header has {width}; the row is ragged (a missing or extra delimiter)"
        for index, cell in enumerate(cells):
            if "\x00" in cell:
                cells[index] = cell.replace("\x00", "")
            if len(cell) > self.max_text_chars:
                return f"column {self.plan.headers[index]!r} holds {len(cell):,} characters, more than csv.max_text_chars ({self.max_text_chars:,})"
        return None

    def _build_merged(self, lines: list[int], merged: dict[int, str], occurrences: dict[str, int], records: list, rejected: list) -> None:
        full = [merged.get(i, "") for i in range(len(self.plan.headers))]
        self._build(lines, full, occurrences, records, rejected)

    def _build(self, lines: list[int], cells: list[str], occurrences: dict[str, int], records: list, rejected: list) -> None:
        ref = f"{self.label} line {lines[0]}" + (f" (merged with line{'s' if len(lines) > 2 else ''} {', '.join(map(str, lines[1:]))})" if len(lines) > 1 else "")
        try:
            builder = {"contacts": self._contact, "orders": self._order, "responses": self._response}[self.kind]
            records.append(builder(cells, occurrences))
        except InvalidRecord as exc:
            column = self._column_name(exc.field_name)
            rejected.append(Rejected(ref, f"{column} {_preview(exc.value)} {exc.reason}", self._raw(cells)))

    def _column_name(self, field_name: str) -> str:
        column = self.plan.mapping.get(field_name)
        return f"column {self.plan.headers[column]!r}" if column is not None else field_name

    def _cell(self, cells: list[str], field_name: str) -> str:
        column = self.plan.mapping.get(field_name)
        return cells[column].strip() if column is not None else ""

    def _time(self, cells: list[str], field_name: str) -> Any:
        value = self._cell(cells, field_name)
        if not value:
            return None
        return m.parse_timestamp(value, field_name, self.zone, self.plan.date_order, self._utc_columns)

    def _properties(self, cells: list[str]) -> dict[str, str]:
        used = set(self.plan.mapping.values())
        return {h: cells[i] for i, h in enumerate(self.plan.headers) if i not in used and h and cells[i].strip()}

    def _row_id(self, cells: list[str], occurrences: dict[str, int]) -> str:
        """The id column, or for logs without one: the row's content and how often it has occurred so far."""
        explicit = _clean_id(self._cell(cells, "id"))
        if explicit:
            return explicit
        digest = hashlib.sha256("\x1f".join(c.strip() for c in cells).encode()).hexdigest()[:20]
        occurrences[digest] = occurrences.get(digest, 0) + 1
        return f"row-{digest}-{occurrences[digest]}"

    def _email(self, cells: list[str], field_name: str = "email") -> EmailAddress | None:
        typed = self._cell(cells, field_name)
        return EmailAddress.parse(typed, field_name) if typed else None

    def _contact(self, cells: list[str], occurrences: dict[str, int]) -> Contact:
        email = self._email(cells)
        source_id = _clean_id(self._cell(cells, "id")) or (email.normalised if email else "")
        if not source_id:
            raise InvalidRecord("email", "", "is empty and the row has no id; a contact needs one of them")
        first, last = self._cell(cells, "first_name"), self._cell(cells, "last_name")
        full = self._cell(cells, "full_name")
        if full and not (first or last):
            first, _, last = full.partition(" ")
        extra = [p for p in _split_list(self._cell(cells, "additional_emails"))]
        return Contact(
            source=self.name,
            source_id=source_id,
            email=email,
            additional_emails=tuple(EmailAddress.parse(p, "additional_emails") for p in extra),
            first_name=first or None,
            last_name=last or None,
            phone=_clean_id(self._cell(cells, "phone")) or None,
            company_name=self._cell(cells, "company") or None,
            lifecycle_stage=self._cell(cells, "lifecycle_stage") or None,
            is_unsubscribed=self._unsubscribed(cells),
            created_at=self._time(cells, "created_at"),
            updated_at=self._time(cells, "updated_at"),
            properties=self._properties(cells),
        )

    def _unsubscribed(self, cells: list[str]) -> bool | None:
        opted_out = self._cell(cells, "unsubscribed")
        if opted_out:
            return m.parse_bool(opted_out, "unsubscribed")
        consent = self._cell(cells, "subscribed").lower()
        if consent in ("unsubscribed", "opted out", "opt-out", "cleaned", "blocklisted"):
            return True
        return False if consent in ("yes", "true", "subscribed", "opted in", "1") else None

    def _order(self, cells: list[str], occurrences: dict[str, int]) -> Order:
        amount_text = self._cell(cells, "amount")
        if not amount_text:
            raise InvalidRecord("amount", "", "is empty; an order needs its amount")
        amount = m.parse_decimal(amount_text, "amount")
        status_text = self._cell(cells, "status")
        status_column = self.plan.mapping.get("status")
        is_stage = status_column is not None and "stage" in m.header_key(self.plan.headers[status_column])
        status = m.parse_status(status_text, "status", is_stage) if status_text else "won"
        refunded = self._cell(cells, "refunded_amount")
        if refunded and amount > 0 and m.parse_decimal(refunded, "refunded_amount") >= amount:
            status = "refunded"
        if self._cell(cells, "cancelled_at") and status != "refunded":
            status = "lost"
        created_at = self._time(cells, "created_at")
        if created_at is None:
            raise InvalidRecord("created_at", "", "is empty; an order needs the date it was placed")
        closed_at = self._time(cells, "closed_at") or self._time(cells, "cancelled_at")
        if closed_at is None and status == "won" and "closed_at" not in self.plan.mapping:
            closed_at = created_at  # a purchase log: the order closed when it was placed
        return Order(
            source=self.name,
            source_id=self._row_id(cells, occurrences),
            amount=amount,
            currency=self._cell(cells, "currency") or self.currency,
            status=status,
            created_at=created_at,
            closed_at=closed_at,
            customer_email=self._email(cells),
            customer_source_id=_clean_id(self._cell(cells, "customer_id")) or None,
            title=self._cell(cells, "title") or None,
            properties=self._properties(cells),
        )

    def _response(self, cells: list[str], occurrences: dict[str, int]) -> SurveyResponse:
        submitted_at = self._time(cells, "submitted_at")
        if submitted_at is None:
            raise InvalidRecord("submitted_at", "", "is empty; a response needs the time it was submitted")
        try:
            email = self._email(cells)
        except InvalidRecord:
            email = None  # kept without a respondent: it still counts for overall sentiment and NPS
        answers = {}
        for column, answer_type in self.plan.answer_columns.items():
            cell = cells[column]
            if not cell.strip():
                continue
            question_id = m.slug(self.plan.headers[column])
            # Free text is kept exactly as written; scores and choices are trimmed.
            value = m.parse_answer_value(cell if answer_type.kind == "text" else cell.strip(), answer_type, f"answers.{question_id}")
            scale = answer_type.scale if answer_type.kind == "rating" else (None, None)
            answers[question_id] = Answer(
                question_id=question_id, answer_kind=answer_type.kind, value=value,
                scale_min=scale[0], scale_max=scale[1], question_text=self.plan.headers[column],
            )
        return SurveyResponse(
            source=self.name,
            source_id=self._row_id(cells, occurrences),
            form_id=self._cell(cells, "form_id") or self.form_id,
            submitted_at=submitted_at,
            respondent_email=email,
            answers=answers,
            raw=self._raw(cells, limit=None),
        )

    def _raw(self, cells: list[str], limit: int | None = 2_000) -> dict[str, str]:
        headers = self.plan.headers or [f"column {i + 1}" for i in range(len(cells))]
        raw = {}
        for index, cell in enumerate(cells):
            name = headers[index] if index < len(headers) else f"column {index + 1}"
            raw[name] = cell if limit is None or len(cell) <= limit else f"{cell[:limit]}… [{len(cell):,} characters]"
        return raw

    # --- reading ----------------------------------------------------------------------------------------------

    def _open(self) -> Any:
        return open(self.path, encoding=self.plan.encoding, newline="", errors="strict")

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        """(line where the row starts, cells), streamed. An unclosed quote is a file-level error."""
        csv.field_size_limit(MAX_FIELD_CHARS)
        with self._open() as handle:
            reader = csv.reader(handle, delimiter=self.plan.delimiter, strict=True)
            line = 1
            try:
                for cells in reader:
                    yield line, cells
                    line = reader.line_num + 1
            except csv.Error as exc:
                detail = "a quoted cell starting here is never closed" if "end of data" in str(exc) else str(exc)
                raise InputError(
                    f"{self.label} line {line}: {detail} — fix the quoting in the export and import it again",
                    path=str(self.path), line=line,
                ) from None


def _merge_surveymonkey_headers(top: list[str], sub: list[str]) -> list[str]:
    """SurveyMonkey exports two header rows: questions on the first (blank where a question spans several
    columns), then 'Response', 'Open-Ended Response' or the choice/row label under each column."""
    merged, question = [], ""
    for index, label in enumerate(top):
        question = label.strip() or question
        detail = sub[index].strip() if index < len(sub) else ""
        merged.append(question if detail in ("", "Response", "Open-Ended Response") else f"{question} - {detail}")
    return merged


def _detect_encoding(path: Path, explicit: str | None) -> str:
    if explicit:
        try:
            return codecs.lookup(explicit).name
        except LookupError:
            raise InputError(f"--encoding {explicit}: not an encoding this tool knows (try utf-8, cp1252, latin-1, utf-16)") from None
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    even_nuls, odd_nuls = head[0::2].count(0), head[1::2].count(0)
    if len(head) >= 8 and odd_nuls > len(head) * 0.4 and even_nuls == 0:
        return "utf-16-le"
    if len(head) >= 8 and even_nuls > len(head) * 0.4 and odd_nuls == 0:
        return "utf-16-be"
    return "utf-8"


def _check_decodes(path: Path, encoding: str) -> None:
    """Decode the whole file once, in chunks; the first bad byte is reported with its line and offset."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    newlines = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                _raise_decode_error(path, encoding, chunk, exc.start, offset, newlines)
            newlines += chunk.count(b"\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InputError(f"{path.name}: the file ends in the middle of a character ({encoding}) — it looks truncated", path=str(path)) from None


def _raise_decode_error(path: Path, encoding: str, chunk: bytes, start: int, offset: int, newlines: int) -> None:
    line = newlines + chunk[:start].count(b"\n") + 1
    sample = chunk[max(0, start - 2000) : start + 2000]
    candidates = charset_normalizer.from_bytes(sample)
    # Western spreadsheet exports are cp1252 far more often than its look-alikes; say so when it fits too.
    fits_cp1252 = any("cp1252" in (match.encoding, *match.could_be_from_charset) for match in candidates)
    best = candidates.best()
    suspect = "cp1252" if fits_cp1252 or best is None or best.encoding in ("utf_8", "ascii") else best.encoding
    label = {"utf-8-sig": "UTF-8", "utf-8": "UTF-8"}.get(encoding, encoding)
    raise InputError(
        f"{path.name} line {line}: byte 0x{chunk[start]:02X} at offset {offset + start:,} is not valid {label}; "
        f"the file looks like {suspect} — re-export it as UTF-8, or run again with --encoding {suspect}",
        path=str(path), line=line,
    )


def _detect_delimiter(sample: str) -> str:
    """The delimiter that splits the header line most often, counted outside quotes: ',' ';' tab or '|'."""
    header = sample.split("\n", 1)[0]
    counts = {d: 0 for d in ",;\t|"}
    inside = False
    for char in header:
        if char == '"':
            inside = not inside
        elif not inside and char in counts:
            counts[char] += 1
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _is_blank(cells: list[str]) -> bool:
    return not any(cell.strip() for cell in cells)


def _clean_id(value: str) -> str:
    """Spreadsheet exports prefix numbers with an apostrophe to keep them text ('9013808660771): drop it."""
    value = value.strip()
    return value[1:] if value.startswith("'") and value[1:].lstrip("+").isdigit() else value


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]


def _original(header: str) -> str:
    return header.rsplit(" (", 1)[0] if header.endswith(")") else header


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}…'"


