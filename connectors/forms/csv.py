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

import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from connectors.base import InputError, InvalidRecord, Page, Rejected, Stream, preview
from connectors.forms import csv_file
from connectors.forms import csv_mapping as m
from connectors.forms.csv_records import RowMapper, clean_id

KINDS = {"contacts": "contact", "orders": "order", "responses": "survey_response"}
PAGE_SIZE = 2_000
# A file is rejected whole only when its bad rows exceed csv.max_bad_row_fraction *and* this many: a few bad
# rows in a small file are the user's to fix one by one, not a sign that the whole mapping is wrong.
MIN_BAD_ROWS_TO_REJECT = 10
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
        self.plan.encoding = csv_file.detect_encoding(self.path, self._explicit_encoding)
        csv_file.check_decodes(self.path, self.plan.encoding)
        self.plan.delimiter = csv_file.detect_delimiter(csv_file.read_head(self.path, self.plan.encoding))
        rows = self._rows()
        first = next(rows, None)
        if first is None:
            self.plan.notices.append(f"{self.label}: the file has no rows; nothing to import")
            return self.plan
        _, header = first
        if m.detect_profile(self.kind, {m.header_key(h) for h in header}) == m.SURVEYMONKEY:
            header = m.merge_surveymonkey_headers(header, next(rows, (0, []))[1])
            self.plan.header_rows = 2
        self._set_headers(header)
        self._scan(rows)
        return self.plan

    def _set_headers(self, header: list[str]) -> None:
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
        key_hashes = array("q")  # 8 bytes a row: pass one must not grow with the size of the ids
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
                key_hashes.append(key)
            if plan.data_rows % 50_000 == 0:
                self.on_progress("checking", plan.data_rows, 0)
        plan.duplicate_keys = _repeated_keys(key_hashes)
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
            if column is not None and column < len(cells) and (value := clean_id(cells[column])):
                return hash((field_name, value.lower()))
        return None

    # --- pass two: records ------------------------------------------------------------------------------------

    def read(self, cursor: str | None = None) -> Iterator[Page]:
        """Yield pages of records; a CSV has no cursor, so re-reading the same file is idempotent instead."""
        plan = self.plan
        if not plan.headers or plan.data_rows == 0:
            return
        self._mapper = RowMapper(
            kind=self.kind, source=self.name, headers=plan.headers, mapping=plan.mapping,
            answer_columns=plan.answer_columns, zone=self.zone, date_order=plan.date_order,
            utc_columns=self._utc_columns, currency=self.currency, form_id=self.form_id,
        )
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
                rejected.append(Rejected(f"{self.label} line {line}", problem, self._mapper.raw(cells)))
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

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        return csv_file.iter_rows(self.path, self.plan.encoding, self.plan.delimiter)

    def _build_merged(self, lines: list[int], merged: dict[int, str], occurrences: dict[str, int], records: list, rejected: list) -> None:
        full = [merged.get(i, "") for i in range(len(self.plan.headers))]
        self._build(lines, full, occurrences, records, rejected)

    def _build(self, lines: list[int], cells: list[str], occurrences: dict[str, int], records: list, rejected: list) -> None:
        ref = f"{self.label} line {lines[0]}" + (f" (merged with line{'s' if len(lines) > 2 else ''} {', '.join(map(str, lines[1:]))})" if len(lines) > 1 else "")
        try:
            records.append(self._mapper.build(cells, occurrences))
        except InvalidRecord as exc:
            column = self._mapper.column_name(exc.field_name)
            rejected.append(Rejected(ref, f"{column} {preview(exc.value)} {exc.reason}", self._mapper.raw(cells)))


def _repeated_keys(key_hashes: array) -> dict[int, int]:
    """Each key hash that occurs more than once, with how often. The hashes are sorted where they are, beside a
    one-byte-a-row mask: np.unique with counts made four arrays as long as the file (about 200 MB more for 6 million
    rows, most of the margin under the import's 512 MB ceiling)."""
    hashes = np.frombuffer(key_hashes, dtype=np.int64)  # a view of the array, not a copy
    hashes.sort()
    repeats = hashes[1:][hashes[1:] == hashes[:-1]]  # one entry per occurrence after a key's first
    values, counts = np.unique(repeats, return_counts=True)
    return dict(zip(values.tolist(), (counts + 1).tolist()))


def _is_blank(cells: list[str]) -> bool:
    return not any(cell.strip() for cell in cells)


def _original(header: str) -> str:
    return header.rsplit(" (", 1)[0] if header.endswith(")") else header
