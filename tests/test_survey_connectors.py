"""Typeform, SurveyMonkey and Google Forms read through their sandboxes over loopback into the store.

Every test runs for each vendor (tests/test_survey_vendors.py holds how each one's payloads differ) and asserts
what a user would notice: what is stored, typed and matched, what is quarantined, what the run says.
"""

from __future__ import annotations

import copy
import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from connectors.base import AuthError, RateLimited, SourceError
from connectors.forms.survey_kit import SeedAnswerSet, seed_answer_sets
from connectors.records import normalise_email
from connectors.sandbox import Fault
from sync.engine import run_source_once
from sync.settings import FormsSettings
from sync.store import Store
from tests.canary import SURVEY_CANARY
from tests.test_survey_vendors import VENDORS, Vendor, changed_copy

BY_NAME = pytest.mark.parametrize("vendor", VENDORS, ids=[v.name for v in VENDORS])


@pytest.fixture
def store(tmp_path: Path):
    opened = Store.open(f"sqlite:///{tmp_path}/r.db")
    yield opened
    opened.close()


def stored(store: Store, vendor: Vendor) -> dict[str, dict]:
    return {source_id: json.loads(payload) for source_id, payload in store.stored_records("survey_response", vendor.name)}


def response_requests(sandbox) -> list:
    return [e for e in sandbox.journal.entries(method="GET") if "/responses" in e.path]


def fresh_answers(sandbox, count: int, seed: int) -> list[SeedAnswerSet]:
    now = sandbox.clock.now()
    return seed_answer_sets(count, seed, now - timedelta(seconds=30), now)


@pytest.mark.fault("F27")
@BY_NAME
def test_5000_responses_read_in_full_then_only_new_pages(vendor: Vendor, store: Store) -> None:
    sandbox, url = vendor.start(5000)
    with sandbox:
        first = run_source_once(store, vendor.source(sandbox, url), "sync", vendor.name)
        assert first.counts["survey_response"].written == 5000
        sandbox.journal.clear()
        sandbox.add_answer_sets(vendor.form_id, fresh_answers(sandbox, 25, seed=99))

        source = vendor.source(sandbox, url)
        second = run_source_once(store, source, "sync", vendor.name)

        counts = second.counts["survey_response"]
        assert counts.written == 25
        assert counts.unchanged == counts.read - 25 <= 3, "only the 10-minute look-back is read again, and found unchanged"
        # Pages read, not requests: at 200x sandbox speed a few milliseconds of scheduling delay on a busy machine
        # are a second of sandbox time, enough for Typeform's 2-a-second window to refuse a request the client paced
        # 0.6 s apart; the client then waits and sends it again (its pacing is checked at a realistic speed in
        # test_typeform_client_keeps_under_two_requests_a_second).
        requests = response_requests(sandbox)
        pages = [e for e in requests if e.status == 200]
        assert {e.status for e in requests} <= {200, 429}, [e.status for e in requests]
        assert len(pages) == 1, "the incremental run reads the one page holding the new responses"
        assert any(name in pages[0].query for name in ("since", "start_modified_at", "filter"))
        records = stored(store, vendor)
        assert len(records) == 5025 == len(sandbox.respondents), "each response stored once"
        assert source.last_stats.responses == counts.read


@pytest.mark.fault("F27")
def test_typeform_duplicates_across_pages_are_stored_once(store: Store) -> None:
    typeform = VENDORS[0]
    sandbox, url = typeform.start(2500)
    with sandbox:
        source = typeform.source(sandbox, url)
        run_source_once(store, source, "sync", "typeform")
    assert source.last_stats.duplicates == 2, "pages 2 and 3 each repeat the last response of the page before"
    assert len(stored(store, typeform)) == 2500
    assert source.last_stats.total_mismatches == []


@BY_NAME
def test_every_identifiable_respondent_is_matched_and_the_rest_counted(vendor: Vendor, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    sandbox, url = vendor.start(400)
    with sandbox:
        sandbox.add_answer_sets(vendor.form_id, [
            SeedAnswerSet(sandbox.clock.now() - timedelta(minutes=5), typed, via, 9, "ok", 4, "Pro", "")
            for typed, via in (("  Jane.Doe@Example.COM ", "hidden"), ("jane.doe@example.com", "question"))
        ])
        source = vendor.source(sandbox, url)
        with caplog.at_level(logging.INFO, logger="connectors.forms.survey_kit"):
            run_source_once(store, source, "sync", vendor.name)
    records = stored(store, vendor)
    expected = {rid: (normalise_email(typed) if typed else None) for rid, typed in sandbox.respondents.items()}
    matched = {rid: (r["respondent_email"] or {}).get("normalised") for rid, r in records.items()}
    assert matched == expected
    anonymous = sum(email is None for email in expected.values())
    assert source.last_stats.anonymous == anonymous > 0
    assert f"402 responses read, {anonymous} of them without an identifiable person (kept" in caplog.text
    jane = [r for r in records.values() if (r["respondent_email"] or {}).get("normalised") == "jane.doe@example.com"]
    assert {r["respondent_email"]["typed"] for r in jane} == {"  Jane.Doe@Example.COM ", "jane.doe@example.com"}
    typed_variants = {}
    for r in records.values():
        if r["respondent_email"]:
            typed_variants.setdefault(r["respondent_email"]["normalised"], set()).add(r["respondent_email"]["typed"])
    assert any(len(v) > 1 for v in typed_variants.values()), "seed data has people typing their address differently"


@BY_NAME
def test_form_edited_between_runs_keeps_old_and_new_responses_typed(vendor: Vendor, store: Store) -> None:
    sandbox, url = vendor.start(60)
    with sandbox:
        run_source_once(store, vendor.source(sandbox, url), "sync", vendor.name)
        old_ids = set(sandbox.respondents)
        edit = getattr(sandbox, "edit_form", None) or sandbox.edit_survey
        edit(vendor.form_id, add=vendor.new_question)
        edit(vendor.form_id, remove=vendor.removed_question_id)
        edit(vendor.form_id, relabel=(vendor.plan_question_id, "Pro", "Professional"))
        sandbox.add_answer_sets(vendor.form_id, [
            SeedAnswerSet(sandbox.clock.now() - timedelta(seconds=20 - i), f"new{i}@example.com", "hidden", 8, "better", 4,
                          "Pro", "comment nobody can give any more")
            for i in range(10)
        ])
        run_source_once(store, vendor.source(sandbox, url), "sync", vendor.name)

    records = stored(store, vendor)
    assert len(records) == 70
    old = [records[rid] for rid in old_ids]
    new = [r for rid, r in records.items() if rid not in old_ids]
    assert all(vendor.new_question_id not in r["answers"] for r in old)
    assert any(vendor.removed_question_id in r["answers"] for r in old), "old answers to the removed question stay"
    assert any(r["answers"][vendor.plan_question_id]["value"] == ["Pro"] for r in old)
    for r in new:
        assert r["answers"][vendor.new_question_id] == {
            "question_id": vendor.new_question_id, "answer_kind": "text", "value": "added later", "scale_min": None,
            "scale_max": None, "question_text": r["answers"][vendor.new_question_id]["question_text"]}
        assert vendor.removed_question_id not in r["answers"]
        assert r["answers"][vendor.plan_question_id]["value"] == ["Professional"]
    kinds = {a["answer_kind"] for r in records.values() for a in r["answers"].values()}
    assert kinds == {"nps", "rating", "choice", "text"}


@BY_NAME
def test_bad_payloads_are_kept_as_documented_or_quarantined_leaving_stored_records_alone(
    vendor: Vendor, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox, url = vendor.start(20)
    with sandbox:
        run_source_once(store, vendor.source(sandbox, url), "sync", vendor.name)
        before = dict(store.stored_records("survey_response", vendor.name))
        template = copy.deepcopy(vendor.items(sandbox, vendor.form_id)[-1])
        existing_id = vendor.response_id(vendor.items(sandbox, vendor.form_id)[0])
        now = (sandbox.clock.now() - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        huge = "Ich bin sehr zufrieden. " * 43_691  # just over 1 MB of one free-text answer
        bad = [
            # kept: a 1 MB answer, stored whole
            changed_copy(vendor, template, ("id", "r-huge"), ("time", now), ("text", huge)),
            # kept: emoji and right-to-left text, stored exactly
            changed_copy(vendor, template, ("id", "r-rtl"), ("time", now), ("text", "שירות מצוין 👍🏽 الخدمة ممتازة")),
            # kept: a NUL byte, removed from the text
            changed_copy(vendor, template, ("id", "r-nul"), ("time", now), ("text", "fine\x00 thanks")),
            # kept: an answer of a question type we do not know, stored raw with a warning
            changed_copy(vendor, template, ("id", "r-unknown"), ("time", now), ("unknown",)),
            # quarantined: no response id
            changed_copy(vendor, template, ("time", now), ("drop_id",)),
            # quarantined: an answer naming no question
            changed_copy(vendor, template, ("id", "r-noq"), ("time", now), ("drop_question_id",)),
            # quarantined: an already stored response comes back with an NPS that is not 0-10; the stored one stays
            changed_copy(vendor, template, ("id", existing_id), ("time", now), ("nps", 11)),
        ]
        for item in bad:
            sandbox.add_raw_response(vendor.form_id, item)
        with caplog.at_level(logging.WARNING):
            result = run_source_once(store, vendor.source(sandbox, url), "sync", vendor.name)

    after = dict(store.stored_records("survey_response", vendor.name))
    assert result.counts["survey_response"].quarantined == 3
    assert store.quarantine_size() == 3
    assert after[existing_id] == before[existing_id], "a rejected payload leaves the stored record exactly as it was"
    assert {k: v for k, v in after.items() if k in before} == before
    answers = {rid: json.loads(after[rid])["answers"] for rid in ("r-huge", "r-rtl", "r-nul", "r-unknown")}
    assert answers["r-huge"][vendor.why_question_id]["value"] == huge
    assert answers["r-rtl"][vendor.why_question_id]["value"] == "שירות מצוין 👍🏽 الخدمة ممتازة"
    assert answers["r-nul"][vendor.why_question_id]["value"] == "fine thanks"
    assert json.loads(after["r-unknown"])["raw"]["untyped_answers"]
    assert caplog.text.count("answer(s) of unknown question types raw") == 1
    reasons = " | ".join(q["reason"] for q in store.quarantined())
    assert "response_id" in reasons and "names no question id" in reasons and "NPS" in reasons


@pytest.mark.fault("F15")
@BY_NAME
def test_revoked_token_stops_with_one_line_and_the_store_unchanged(vendor: Vendor, store: Store) -> None:
    sandbox, url = vendor.start(50)
    with sandbox:
        run_source_once(store, vendor.source(sandbox, url), "sync", vendor.name)
        before = store.checksum()
        sandbox.add_answer_sets(vendor.form_id, fresh_answers(sandbox, 5, seed=3))
        sandbox.revoke(SURVEY_CANARY)
        with pytest.raises(AuthError) as raised:
            run_source_once(store, vendor.source(sandbox, url), "sync", vendor.name)
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and "401" in message and "RETENTION_" in message
    assert store.checksum() == before


@pytest.mark.fault("F5", "F6", "F8")
@BY_NAME
def test_429_and_5xx_are_retried_after_the_wait_the_vendor_asks(vendor: Vendor, store: Store) -> None:
    sandbox, url = vendor.start(300)
    with sandbox:
        sandbox.faults.add(Fault(status=429, match="/responses", times=2, retry_after_s=3))
        sandbox.faults.add(Fault(status=503, match="/responses", times=1))
        run_source_once(store, vendor.source(sandbox, url), "sync", vendor.name)
    calls = response_requests(sandbox)
    assert [c.status for c in calls[:4]] == [429, 429, 503, 200]
    assert calls[1].monotonic - calls[0].monotonic >= 3, "never before the Retry-After expires"
    assert len(stored(store, vendor)) == 300


@pytest.mark.fault("F9")
def test_a_stalled_request_times_out_and_is_retried(store: Store) -> None:
    typeform = VENDORS[0]
    sandbox, url = typeform.start(50)
    with sandbox:
        stall = sandbox.faults.add(Fault(kind="stall", stall_s=1.5, match="/responses"))
        run_source_once(store, typeform.source(sandbox, url, timeout_s=1.0), "sync", "typeform")
        answered_without_fault = [c for c in response_requests(sandbox) if c.fault is None and c.status == 200]
    assert stall.times == 0, "the stalled request was sent"
    assert len(answered_without_fault) == 1, "the client gave up on the stalled request and sent it again"
    assert len(stored(store, typeform)) == 50


@pytest.mark.fault("F27")
def test_google_unordered_pages_are_all_read_before_the_mark_moves(store: Store) -> None:
    google = VENDORS[2]
    sandbox, url = google.start(6000)
    with sandbox:
        run_source_once(store, google.source(sandbox, url), "sync", "google_forms")
        first_pages = response_requests(sandbox)
        sandbox.journal.clear()
        sandbox.add_answer_sets(google.form_id, fresh_answers(sandbox, 10, seed=8))
        second = run_source_once(store, google.source(sandbox, url), "sync", "google_forms")
    assert [bool(e.query.get("pageToken")) for e in first_pages] == [False, True], "5,000 a page: two pages"
    counts = second.counts["survey_response"]
    assert counts.written == 10 and counts.read - 10 <= 3, "only the look-back window is read again"
    assert len(response_requests(sandbox)) == 1
    assert len(stored(store, google)) == 6010


def test_typeform_client_keeps_under_two_requests_a_second(store: Store) -> None:
    typeform = VENDORS[0]
    sandbox, url = typeform.start(2500, speed=5.0)  # slow enough that an unthrottled client would meet the limit
    with sandbox:
        run_source_once(store, typeform.source(sandbox, url), "sync", "typeform")
    calls = sandbox.journal.entries()
    assert len(calls) == 5 and {c.status for c in calls} == {200}, "forms list, form, three pages: none refused"
    assert all(later.monotonic - earlier.monotonic >= 1.0 for earlier, later in zip(calls, calls[2:]))


def test_unknown_form_is_one_line_naming_it(store: Store) -> None:
    typeform = VENDORS[0]
    sandbox, url = typeform.start(5)
    with sandbox, pytest.raises(SourceError) as raised:
        source = typeform.source_type(FormsSettings(forms=("NoSuchForm",)), token=SURVEY_CANARY, base_url=url, clock=sandbox.clock)
        run_source_once(store, source, "sync", "typeform")
    assert str(raised.value) == ("typeform answered HTTP 404 while reading form NoSuchForm: Form NoSuchForm not found; "
                                 "check the form and survey ids in settings.toml")


@pytest.mark.fault("F7")
def test_surveymonkey_daily_cap_stops_the_run_with_nothing_half_written(store: Store) -> None:
    surveymonkey = VENDORS[1]
    sandbox, url = surveymonkey.start(1000, per_day=6)
    before = store.checksum()
    with sandbox, pytest.raises(RateLimited) as raised:
        run_source_once(store, surveymonkey.source(sandbox, url), "sync", "surveymonkey")
    assert "resumes from the last saved point" in str(raised.value)
    assert store.checksum() == before
    assert response_requests(sandbox)[-1].status == 429


@pytest.mark.fault("F27")
@pytest.mark.parametrize("vendor", VENDORS[:2], ids=[v.name for v in VENDORS[:2]])
def test_vendor_total_that_disagrees_with_what_was_read_is_reported(vendor: Vendor, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    sandbox, url = vendor.start(120)
    sandbox.total_skew = 3
    with sandbox, caplog.at_level(logging.WARNING):
        source = vendor.source(sandbox, url)
        run_source_once(store, source, "sync", vendor.name)
    assert source.last_stats.total_mismatches == [f"form {vendor.form_id}: {vendor.name} reported 123 responses, 120 distinct were read"]
    assert "reported 123 responses, 120 distinct were read" in caplog.text
    assert len(stored(store, vendor)) == 120


@pytest.mark.fault("SEC-secrets")
@BY_NAME
def test_canary_token_never_leaves_the_client(vendor: Vendor, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    canary = "canary-7f3a9c-DO-NOT-LEAK"
    db = tmp_path / "canary.db"
    store = Store.open(f"sqlite:///{db}")
    sandbox, url = vendor.start(80, token=canary)
    messages = []
    with sandbox, caplog.at_level(logging.DEBUG):
        sandbox.faults.add(Fault(status=429, match="/responses", times=1, retry_after_s=1))
        sandbox.faults.add(Fault(status=500, match="/responses", times=1))
        run_source_once(store, vendor.source(sandbox, url, token=canary), "sync", vendor.name)
        sandbox.add_answer_sets(vendor.form_id, fresh_answers(sandbox, 3, seed=5))
        sandbox.revoke(canary)
        with pytest.raises(AuthError) as raised:
            run_source_once(store, vendor.source(sandbox, url, token=canary), "sync", vendor.name)
        messages.append(str(raised.value))
        messages.append(repr(raised.value.__cause__))
    store.close()
    assert canary not in caplog.text
    assert all(canary not in m for m in messages)
    assert all(canary.encode() not in p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert canary not in repr(sandbox.journal.entries())


def test_missing_token_is_one_clear_line() -> None:
    for vendor in VENDORS:
        with pytest.raises(AuthError, match=f"{vendor.name}: no access token is set; .*RETENTION_"):
            vendor.source_type(FormsSettings(forms=(vendor.form_id,)), token="", base_url="http://127.0.0.1:9")
