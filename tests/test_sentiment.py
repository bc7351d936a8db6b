"""Sentiment of free-text answers: the command, the method, and its accuracy on real labelled sentences."""

from __future__ import annotations

import csv

import pytest
from sklearn.metrics import accuracy_score

from scoring.sentiment import SentimentModel
from tests.conftest import Workspace, shared_file


def labelled_sentences(name: str) -> tuple[list[str], list[int]]:
    # One "sentence<TAB>label" per line, no quoting: split on the last tab (../shared/data/README.md).
    pairs = [line.rstrip("\n").rsplit("\t", 1) for line in shared_file(name).open(encoding="utf-8") if line.strip()]
    return [text for text, _ in pairs], [int(label) for _, label in pairs]


def run_sentiment(workspace: Workspace, rows: list[list[str]], *extra: str) -> tuple[int, str, list[list[str]]]:
    source = workspace.root / "survey.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["Email", "NPS", "Comments"], *rows])
    result = workspace.run("sentiment", str(source), "--column", "comments", "--out", str(workspace.root / "out.csv"), *extra)
    output = list(csv.reader((workspace.root / "out.csv").open(encoding="utf-8"))) if result.exit_code == 0 else []
    return result.exit_code, result.stdout + result.stderr, output


def test_every_answer_is_labelled_and_the_rows_are_kept(workspace: Workspace) -> None:
    answers = [
        ["a@example.com", "9", "Lovely tea, fast delivery 👍"],
        ["b@example.com", "3", "Not good. The box was crushed 😡"],
        ["c@example.com", "7", ""],
        ["d@example.com", "8", "not bad at all"],
        ["e@example.com", "5", "=HYPERLINK(\"http://evil.example\")"],
    ]

    code, said, output = run_sentiment(workspace, answers)

    assert code == 0, said
    assert output[0] == ["Email", "NPS", "Comments", "sentiment", "sentiment_score"]
    assert [row[3] for row in output[1:]] == ["positive", "negative", "neutral", "positive", "neutral"]
    assert all(-1.0 <= float(row[4]) <= 1.0 for row in output[1:])
    assert output[5][2] == "'=HYPERLINK(\"http://evil.example\")", "formula-looking answers are neutralised in the file we write"


def test_an_nps_column_calibrates_the_method_on_the_business_own_words(workspace: Workspace) -> None:
    texts, labels = labelled_sentences("yelp_labelled.txt")
    rows = [[f"p{i}@example.com", "10" if label else "2", text] for i, (text, label) in enumerate(zip(texts[:200], labels[:200]))]

    code, said, output = run_sentiment(workspace, rows, "--nps", "NPS")

    assert code == 0, said
    assert "calibrated on 200 answers with an NPS of 9-10 or 0-6" in said
    assert len(output) == 201


def test_a_missing_column_is_one_line(workspace: Workspace) -> None:
    (workspace.root / "s.csv").write_text("Email,Answer\na@example.com,great\n")

    result = workspace.run("sentiment", str(workspace.root / "s.csv"), "--column", "Comments", "--out", str(workspace.root / "o.csv"))

    assert result.exit_code == 3
    assert result.stderr.strip() == "retention: --column Comments: s.csv has no such column; its columns are: Email, Answer"
    assert not (workspace.root / "o.csv").exists()


@pytest.mark.parametrize(("name", "vader_level"), [("amazon_cells_labelled.txt", 0.84), ("yelp_labelled.txt", 0.81)])
def test_the_default_method_keeps_vader_accuracy_on_real_sentences(name: str, vader_level: float) -> None:
    texts, labels = labelled_sentences(name)
    predicted = [int(score > 0) for score in SentimentModel().score(texts)]
    assert accuracy_score(labels, predicted) >= vader_level


def test_calibrating_on_one_business_helps_on_another() -> None:
    amazon, yelp = labelled_sentences("amazon_cells_labelled.txt"), labelled_sentences("yelp_labelled.txt")
    for (train_texts, train_labels), (test_texts, test_labels) in ((amazon, yelp), (yelp, amazon)):
        default = accuracy_score(test_labels, [int(s > 0) for s in SentimentModel().score(test_texts)])
        calibrated = accuracy_score(test_labels, [int(s > 0) for s in SentimentModel().fit(train_texts, train_labels).score(test_texts)])
        assert calibrated > default
