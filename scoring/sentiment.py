"""Sentiment of free-text survey answers: a label (positive / neutral / negative) and a score from -1 to 1.

Methods (README, "Sentiment"):
- Unfitted: VADER's compound score, which handles negation ("not good"), intensifiers, capitals and punctuation.
  Common feedback emoji that VADER reads as neutral descriptions ("thumbs up") are first put into words it knows.
  Labels use VADER's published thresholds: >= 0.05 positive, <= -0.05 negative, else neutral.
- Fitted on answers that also carry a rating or NPS (so their sentiment is known), the method learns the
  business's own words; the score is then 2 P(positive) - 1.
  - ``encoder`` (the optional extra): a logistic regression on all-MiniLM-L6-v2 sentence vectors, its strength
    chosen by cross-validation on those answers, stacked with VADER's and TextBlob's scores by a second logistic
    regression learnt on out-of-fold predictions, so the stack never sees a vector the first model was fitted on.
  - ``lexicon``: a logistic combination of VADER's and TextBlob's scores alone.
  - ``auto`` (the default) is ``encoder`` where the extra is installed, else ``lexicon``.
  A few dozen rated answers are enough; with fewer, or all of one kind, the unfitted method stays.
- An answer with no letters, digits or emoji (blank, "-", "...") is neutral, 0, whatever the method.
Everything runs offline: the lexicons and the encoder's weights ship inside their packages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from textblob import TextBlob
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from scoring.sentence_encoder import EncoderUnavailable, SentenceEncoder, is_encoder_installed
from scoring.sentiment_bands import sentiment_label  # re-exported: the label lives apart from the model's libraries

MIN_RATED_ANSWERS = 30
MAX_FOLDS = 5
ENCODER_STRENGTHS = np.logspace(-2, 2, 9)  # inverse regularisation strengths the cross-validation chooses among
Method = Literal["auto", "encoder", "lexicon"]
METHODS: tuple[Method, ...] = ("auto", "encoder", "lexicon")
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


def _has_content(text: str) -> bool:
    # Letters, digits and emoji are all "alphanumeric or not ASCII punctuation"; a blank or "..." is neither.
    return any(char.isalnum() or (not char.isascii() and not char.isspace()) for char in text)


class SentimentModel:
    """score() and label() work unfitted (VADER); fit() on rated answers calibrates it to the business's words."""

    def __init__(self, method: Method = "auto", min_rated_answers: int = MIN_RATED_ANSWERS, random_state: int = 7) -> None:
        self.method = method
        self.min_rated_answers = min_rated_answers
        self.random_state = random_state
        self._vader = SentimentIntensityAnalyzer()  # a lexicon, loaded once: no learning happens here
        self._encoder: SentenceEncoder | None = None

    @property
    def is_calibrated(self) -> bool:
        return hasattr(self, "method_")

    def describe(self) -> str:
        """The method in use, in words a user can read."""
        if not self.is_calibrated:
            return "VADER"
        if self.method_ == "encoder":
            return f"sentence encoder + VADER + TextBlob, learnt from {self.trained_on_:,} rated answers"
        return f"VADER + TextBlob, learnt from {self.trained_on_:,} rated answers"

    def _lexicon_features(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            prepared = _words_for_emoji(text)
            blob = TextBlob(prepared).sentiment
            rows.append((self._vader.polarity_scores(prepared)["compound"], blob.polarity, blob.subjectivity))
        return np.asarray(rows, dtype=float).reshape(-1, 3)

    def _sentence_vectors(self, texts: Sequence[str]) -> np.ndarray:
        if self._encoder is None:
            self._encoder = SentenceEncoder()
        return self._encoder.encode(list(texts))

    def _chosen_method(self) -> Literal["encoder", "lexicon"]:
        if self.method == "lexicon":
            return "lexicon"
        if self.method == "encoder" or is_encoder_installed():
            return "encoder"  # SentenceEncoder() says what to install when the extra is absent
        return "lexicon"

    def fit(self, texts: Sequence[str], is_positive: Sequence[bool]) -> SentimentModel:
        """Learn from answers whose sentiment is known (e.g. NPS 9-10 positive, 0-6 negative)."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        kept = [(text, bool(positive)) for text, positive in zip(texts, is_positive, strict=True) if _has_content(text or "")]
        labels = np.asarray([positive for _, positive in kept], dtype=int)
        if len(labels) < self.min_rated_answers or labels.min() == labels.max():
            return self
        texts = [text for text, _ in kept]
        lexicon = self._lexicon_features(texts)
        method = self._chosen_method()
        if method == "encoder":
            lexicon = np.column_stack([self._fit_sentence_model(texts, labels), lexicon])
        self.combination_ = LogisticRegression(C=1.0).fit(lexicon, labels)
        self.method_, self.trained_on_ = method, len(labels)
        return self

    def _fit_sentence_model(self, texts: Sequence[str], labels: np.ndarray) -> np.ndarray:
        """Fit the vector model; return its out-of-fold decision values on the training answers for the stack."""
        vectors = self._sentence_vectors(texts)
        folds = StratifiedKFold(n_splits=min(MAX_FOLDS, int(np.bincount(labels).min())), shuffle=True, random_state=self.random_state)
        losses = []
        for strength in ENCODER_STRENGTHS:
            model = LogisticRegression(C=strength, max_iter=5_000)
            probability = cross_val_predict(model, vectors, labels, cv=folds, method="predict_proba")[:, 1]
            losses.append(-np.mean(np.log(np.where(labels == 1, probability, 1 - probability).clip(1e-12))))
        self.sentence_strength_ = float(ENCODER_STRENGTHS[int(np.argmin(losses))])
        model = LogisticRegression(C=self.sentence_strength_, max_iter=5_000)
        out_of_fold = cross_val_predict(model, vectors, labels, cv=folds, method="decision_function")
        self.sentence_model_ = model.fit(vectors, labels)
        return out_of_fold

    def score(self, texts: Iterable[str]) -> np.ndarray:
        """From -1 (negative) to 1 (positive); 0 for an answer with nothing in it."""
        texts = [text or "" for text in texts]
        scores = np.zeros(len(texts))
        present = [at for at, text in enumerate(texts) if _has_content(text)]
        if not present:
            return scores
        kept = [texts[at] for at in present]
        if not self.is_calibrated:
            # Uncalibrated, only VADER's score is used: TextBlob and the encoder are not run at all.
            scores[present] = [self._vader.polarity_scores(_words_for_emoji(text))["compound"] for text in kept]
            return scores
        features = self._lexicon_features(kept)
        if self.method_ == "encoder":
            features = np.column_stack([self.sentence_model_.decision_function(self._sentence_vectors(kept)), features])
        scores[present] = 2 * self.combination_.predict_proba(features)[:, 1] - 1
        return scores

    def label(self, texts: Iterable[str]) -> list[str]:
        return [sentiment_label(value) for value in self.score(texts)]


__all__ = ["EncoderUnavailable", "METHODS", "Method", "SentimentModel", "sentiment_label"]
