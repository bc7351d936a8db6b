"""One CSV row -> one canonical record, following the column plan the import's first pass made."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from connectors.base import InvalidRecord
from connectors.forms import csv_mapping as m
from connectors.records import Answer, Contact, EmailAddress, Order, Record, SurveyResponse


@dataclass
class RowMapper:
    kind: str  # contacts, orders, responses
    source: str
    headers: list[str]
    mapping: dict[str, int]  # canonical field -> column
    answer_columns: dict[int, m.AnswerType]
    zone: ZoneInfo
    date_order: str
    utc_columns: bool
    currency: str
    form_id: str

    def build(self, cells: list[str], occurrences: dict[str, int]) -> Record:
        """The record for one row (or merged rows); raises InvalidRecord naming the field."""
        builder = {"contacts": self._contact, "orders": self._order, "responses": self._response}[self.kind]
        return builder(cells, occurrences)

    def column_name(self, field_name: str) -> str:
        column = self.mapping.get(field_name)
        return f"column {self.headers[column]!r}" if column is not None else field_name

    def _cell(self, cells: list[str], field_name: str) -> str:
        column = self.mapping.get(field_name)
        return cells[column].strip() if column is not None else ""

    def _time(self, cells: list[str], field_name: str) -> Any:
        value = self._cell(cells, field_name)
        if not value:
            return None
        return m.parse_timestamp(value, field_name, self.zone, self.date_order, self.utc_columns)

    def _properties(self, cells: list[str]) -> dict[str, str]:
        used = set(self.mapping.values())
        return {h: cells[i] for i, h in enumerate(self.headers) if i not in used and h and cells[i].strip()}

    def _row_id(self, cells: list[str], occurrences: dict[str, int]) -> str:
        """The id column, or for logs without one: the row's content and how often it has occurred so far."""
        explicit = clean_id(self._cell(cells, "id"))
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
        source_id = clean_id(self._cell(cells, "id")) or (email.normalised if email else "")
        if not source_id:
            raise InvalidRecord("email", "", "is empty and the row has no id; a contact needs one of them")
        first, last = self._cell(cells, "first_name"), self._cell(cells, "last_name")
        full = self._cell(cells, "full_name")
        if full and not (first or last):
            first, _, last = full.partition(" ")
        extra = [p for p in split_list(self._cell(cells, "additional_emails"))]
        return Contact(
            source=self.source,
            source_id=source_id,
            email=email,
            additional_emails=tuple(EmailAddress.parse(p, "additional_emails") for p in extra),
            first_name=first or None,
            last_name=last or None,
            phone=clean_id(self._cell(cells, "phone")) or None,
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
        status_column = self.mapping.get("status")
        is_stage = status_column is not None and "stage" in m.header_key(self.headers[status_column])
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
        if closed_at is None and status == "won" and "closed_at" not in self.mapping:
            closed_at = created_at  # a purchase log: the order closed when it was placed
        return Order(
            source=self.source,
            source_id=self._row_id(cells, occurrences),
            amount=amount,
            currency=self._cell(cells, "currency") or self.currency,
            status=status,
            created_at=created_at,
            closed_at=closed_at,
            customer_email=self._email(cells),
            customer_source_id=clean_id(self._cell(cells, "customer_id")) or None,
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
        for column, answer_type in self.answer_columns.items():
            cell = cells[column]
            if not cell.strip():
                continue
            question_id = m.slug(self.headers[column])
            # Free text is kept exactly as written; scores and choices are trimmed.
            value = m.parse_answer_value(cell if answer_type.kind == "text" else cell.strip(), answer_type, f"answers.{question_id}")
            scale = answer_type.scale if answer_type.kind == "rating" else (None, None)
            answers[question_id] = Answer(
                question_id=question_id, answer_kind=answer_type.kind, value=value,
                scale_min=scale[0], scale_max=scale[1], question_text=self.headers[column],
            )
        return SurveyResponse(
            source=self.source,
            source_id=self._row_id(cells, occurrences),
            form_id=self._cell(cells, "form_id") or self.form_id,
            submitted_at=submitted_at,
            respondent_email=email,
            answers=answers,
            raw=self.raw(cells, limit=None),
        )

    def raw(self, cells: list[str], limit: int | None = 2_000) -> dict[str, str]:
        headers = self.headers or [f"column {i + 1}" for i in range(len(cells))]
        raw = {}
        for index, cell in enumerate(cells):
            name = headers[index] if index < len(headers) else f"column {index + 1}"
            raw[name] = cell if limit is None or len(cell) <= limit else f"{cell[:limit]}… [{len(cell):,} characters]"
        return raw


def clean_id(value: str) -> str:
    """Spreadsheet exports prefix numbers with an apostrophe to keep them text ('9013808660771): drop it."""
    value = value.strip()
    return value[1:] if value.startswith("'") and value[1:].lstrip("+").isdigit() else value


def split_list(value: str) -> list[str]:
    return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
