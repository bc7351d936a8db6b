"""Property tests: whatever text a cell holds comes back as it was; every offset lands on the same instant."""

from __future__ import annotations

import csv
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.forms.csv import CsvImport
from connectors.forms.csv_mapping import parse_timestamp

# Any printable text a person could type into a name: emoji, right-to-left scripts, combining marks, quotes,
# delimiters and newlines included. NUL is stripped by design and surrounding spaces are trimmed, so neither
# is generated here (both have their own fixtures).
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00") | st.sampled_from(',;"\n\t'),
    min_size=1, max_size=80,
).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None)
@given(first_names=st.lists(names, min_size=1, max_size=8), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
def test_any_unicode_name_round_trips_through_an_import(first_names: list[str], encoding: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "contacts.csv"
        with path.open("w", encoding=encoding, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Email", "First Name"])
            writer.writerows([f"p{i}@example.com", name] for i, name in enumerate(first_names))
        source = CsvImport(path, "contacts", zone=ZoneInfo("UTC"), currency="USD")
        source.prepare()
        records = [record for page in source.read() for record in page.records]
    assert [record.first_name for record in records] == first_names


offsets = st.integers(min_value=-12 * 60, max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
instants = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)).map(lambda d: d.replace(microsecond=0))


@pytest.mark.fault("F20")
@given(instant=instants, offset=offsets, separator=st.sampled_from(["T", " "]))
def test_every_offset_notation_lands_on_the_same_utc_instant(instant: datetime, offset: timezone, separator: str) -> None:
    moment = instant.replace(tzinfo=timezone.utc)
    local = moment.astimezone(offset)
    text = local.isoformat(sep=separator)
    compact = text[:-3] + text[-2:]  # -0500, as Shopify writes it
    for written in (text, compact, moment.isoformat().replace("+00:00", "Z")):
        assert parse_timestamp(written, "created_at", ZoneInfo("Pacific/Chatham"), "auto") == moment
