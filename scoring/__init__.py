"""Scoring: features, churn risk, CLV, segments and sentiment, estimator-style and deterministic."""

# The churn model's version: in every score record and the sync's fingerprints, so a new version rescores everyone.
MODEL_VERSION = "churn-4"
