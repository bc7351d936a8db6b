"""Sentiment of free-text survey answers: a label (positive / neutral / negative) and a score from -1 to 1.

Methods (README, "Sentiment"):
- Unfitted: VADER's compound score, which handles negation ("not good"), intensifiers, capitals and punctuation.
  Common feedback emoji that VADER reads as neutral descriptions ("thumbs up") are first put into words it knows.
  Labels use VADER's published thresholds: >= 0.05 positive, <= -0.05 negative, else neutral.
- Fitted on answers that also carry a rating or NPS (so their sentiment is known), the method learns the
  business's own words; the score is then 2 P(positive) - 1.
  - ``encoder`` (the optional extra): a logistic regression on all-MiniLM-L6-v2 sentence vectors and one on the
    answers' words and word pairs (TF-IDF), each with its strength chosen by cross-validation on those answers,
    stacked with VADER's and TextBlob's scores by a second logistic regression learnt on out-of-fold predictions,
    so the stack never sees an answer a first-level model was fitted on. The vectors know English but not the
    business's words; the word model learns those words ("refund", "waste of") and the pairs that carry negation.
  - ``lexicon``: a logistic combination of VADER's and TextBlob's scores alone.
  - ``auto`` (the default) is ``encoder`` where the extra is installed, else ``lexicon``.
  A few dozen rated answers are enough; with fewer, or all of one kind, the unfitted method stays.
- An answer with no letters, digits or emoji (blank, "-", "...") is neutral, 0, whatever the method.
Everything runs offline: the lexicons and the encoder's weights ship inside their packages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from textblob import TextBlob
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from scoring.sentence_encoder import EncoderUnavailable, SentenceEncoder, is_encoder_installed
from scoring.sentiment_bands import sentiment_label  # re-exported: the label lives apart from the model's libraries

MIN_RATED_ANSWERS = 30
MAX_FOLDS = 5
STRENGTHS = np.logspace(-2, 2, 9)  # inverse regularisation strengths the cross-validation chooses among
WORD_NGRAMS = (1, 2)  # single words and word pairs: a pair carries negation ("not good") and phrases ("waste of")
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


def _vector_model(strength: float) -> LogisticRegression:
    return LogisticRegression(C=strength, max_iter=5_000)


def _word_model(strength: float) -> Pipeline:
    return make_pipeline(TfidfVectorizer(ngram_range=WORD_NGRAMS, sublinear_tf=True), LogisticRegression(C=strength, max_iter=5_000))


def _fit_with_out_of_fold(make_model: Callable[[float], object], inputs: object, labels: np.ndarray,
                          folds: StratifiedKFold) -> tuple[object, np.ndarray]:
    """The model at the strength whose out-of-fold log-loss is lowest, fitted on every answer, and its out-of-fold
    decision values on them: the stack learns from those, never from a score of an answer the model was fitted on."""
    losses = []
    for strength in STRENGTHS:
        probability = cross_val_predict(make_model(strength), inputs, labels, cv=folds, method="predict_proba")[:, 1]
        losses.append(-np.mean(np.log(np.where(labels == 1, probability, 1 - probability).clip(1e-12))))
    model = make_model(float(STRENGTHS[int(np.argmin(losses))]))
    out_of_fold = cross_val_predict(model, inputs, labels, cv=folds, method="decision_function")
    return model.fit(inputs, labels), out_of_fold


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
            return f"sentence encoder + word model + VADER + TextBlob, learnt from {self.trained_on_:,} rated answers"
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
            folds = StratifiedKFold(n_splits=min(MAX_FOLDS, int(np.bincount(labels).min())), shuffle=True, random_state=self.random_state)
            self.sentence_model_, sentence_out_of_fold = _fit_with_out_of_fold(_vector_model, self._sentence_vectors(texts), labels, folds)
            self.word_model_, word_out_of_fold = _fit_with_out_of_fold(_word_model, [_words_for_emoji(text) for text in texts], labels, folds)
            lexicon = np.column_stack([sentence_out_of_fold, word_out_of_fold, lexicon])
        self.combination_ = LogisticRegression(C=1.0).fit(lexicon, labels)
        self.method_, self.trained_on_ = method, len(labels)
        return self

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
            features = np.column_stack([self.sentence_model_.decision_function(self._sentence_vectors(kept)),
                                        self.word_model_.decision_function([_words_for_emoji(text) for text in kept]), features])
        scores[present] = 2 * self.combination_.predict_proba(features)[:, 1] - 1
        return scores

    def label(self, texts: Iterable[str]) -> list[str]:
        return [sentiment_label(value) for value in self.score(texts)]


__all__ = ["EncoderUnavailable", "METHODS", "Method", "SentimentModel", "sentiment_label"]
