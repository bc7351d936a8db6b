"""Sentiment of free-text survey answers: a label (positive / neutral / negative) and a score from -1 to 1.

Method (README, "Sentiment"):
- Default: VADER's compound score, which handles negation ("not good"), intensifiers, capitals and
  punctuation. Common feedback emoji that VADER reads as neutral descriptions ("thumbs up") are first put into
  words it knows. Labels use VADER's published thresholds: >= 0.05 positive, <= -0.05 negative, else neutral.
- Self-calibration: given answers that also carry a rating or NPS (so their sentiment is known), ``fit`` learns a
  logistic combination of VADER's and TextBlob's scores on the business's own words. The score is then
  2 P(positive) - 1. A few dozen rated answers are enough; with fewer, the default stays.
Everything runs offline: both lexicons ship inside their packages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from textblob import TextBlob
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from scoring.sentiment_bands import sentiment_label  # re-exported: the label lives apart from the model's libraries

MIN_RATED_ANSWERS = 30
# Emoji whose VADER description carries no sentiment, put into words its lexicon scores.
EMOJI_WORDS = {
    "👍": " good ", "👎": " bad ", "❤": " love ", "❤️": " love ", "😍": " love ", "🥰": " love ", "💯": " perfect ",
    "🙂": " happy ", "😊": " happy ", "😀": " happy ", "😃": " happy ", "😄": " happy ", "👏": " great ",
    "🙁": " unhappy ", "☹": " unhappy ", "☹️": " unhappy ", "😞": " sad ", "😢": " sad ", "😭": " sad ",
    "😠": " angry ", "😡": " angry ", "🤬": " angry ", "💩": " awful ",
}


def _words_for_emoji(text: str) -> str:
    for emoji, words in EMOJI_WORDS.items():
        if emoji in text:
            text = text.replace(emoji, words)
    return text


class SentimentModel:
    """score() and label() work unfitted (VADER); fit() on rated answers calibrates it to the business's words."""

    def __init__(self, min_rated_answers: int = MIN_RATED_ANSWERS) -> None:
        self.min_rated_answers = min_rated_answers
        self._vader = SentimentIntensityAnalyzer()  # a lexicon, loaded once: no learning happens here

    def _features(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            prepared = _words_for_emoji(text or "")
            vader = self._vader.polarity_scores(prepared)
            blob = TextBlob(prepared).sentiment
            rows.append((vader["compound"], vader["pos"], vader["neg"], blob.polarity, blob.subjectivity))
        return np.asarray(rows, dtype=float).reshape(-1, 5)

    def fit(self, texts: Sequence[str], is_positive: Sequence[bool]) -> SentimentModel:
        """Learn from answers whose sentiment is known (e.g. NPS 9-10 positive, 0-6 negative)."""
        labels = np.asarray(is_positive, dtype=int)
        if len(labels) >= self.min_rated_answers and labels.min() != labels.max():
            self.calibration_ = LogisticRegression(C=1.0).fit(self._features(texts), labels)
        return self

    def score(self, texts: Iterable[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros(0)
        if hasattr(self, "calibration_"):
            return 2 * self.calibration_.predict_proba(self._features(texts))[:, 1] - 1
        # Uncalibrated, only VADER's score is used: TextBlob is not run at all.
        return np.asarray([self._vader.polarity_scores(_words_for_emoji(text or ""))["compound"] for text in texts])

    def label(self, texts: Iterable[str]) -> list[str]:
        return [sentiment_label(value) for value in self.score(texts)]

