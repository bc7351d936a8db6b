"""Scoring: features, churn risk, CLV, segments and sentiment, estimator-style and deterministic."""
