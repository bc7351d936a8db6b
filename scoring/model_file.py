"""The fitted churn model on disk: saved with what it is, and reused while it is young and fits the data.

Refitting on every run would move many customers' rounded risks for no reason in the data, and the sync would
re-send them. So a saved model is reused until it is ``retrain_days`` old, as long as it was fitted by this version,
with the same settings, on the same kind of inputs, and as of a date no later than the one being scored (a model
fitted later would have seen what came after). Anything else, including an unreadable file, means a refit.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import joblib
import pandas as pd
import sklearn

from scoring import MODEL_VERSION
from scoring.churn import ALL_FEATURES, ChurnModel, ModelInputs

log = logging.getLogger(__name__)
MODEL_NAME, METADATA_NAME = "churn-model.joblib", "churn-model.json"


@dataclass(frozen=True)
class ModelFit:
    """What decides whether a saved model may score this data: it must have been fitted the same way."""

    horizon_setting: int | None  # None: derived from the purchase cycle
    random_seed: int
    inputs: ModelInputs

    def metadata(self) -> dict[str, object]:
        return {"version": MODEL_VERSION, "scikit_learn": sklearn.__version__, "feature_set": list(ALL_FEATURES),
                "horizon_setting": self.horizon_setting, "random_seed": self.random_seed, "inputs": asdict(self.inputs)}


def save_model(model: ChurnModel, directory: Path, as_of: pd.Timestamp, customers: int, fit: ModelFit) -> Path:
    """The fitted model and what it is (version, method, horizon, window, backtest, features), 0600.
    Each file is written aside and renamed into place, so a reader never sees half of one."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    metadata = {
        **fit.metadata(),
        "method": model.method_,
        "value_method": model.value_method_,
        "churn_means": model.label_,
        "horizon_days": model.horizon_days_,
        "training_window": [model.training_window_[0].isoformat(), model.training_window_[1].isoformat()],
        "as_of": as_of.isoformat(),
        "customers": customers,
        "features": list(model.features_),
        "backtest": {
            "roc_auc": model.backtest_.get("roc_auc", {}),
            "validated_at": str(model.backtest_.get("validated_at", "")),
            "trained_on": [str(cutoff) for cutoff in model.backtest_.get("trained_on", [])],
        },
    }
    model_path = directory / MODEL_NAME
    _write_private(model_path, lambda handle: joblib.dump(model, handle))
    _write_private(directory / METADATA_NAME, lambda handle: handle.write(json.dumps(metadata, indent=2).encode()))
    return model_path


def load_model(directory: Path, as_of: pd.Timestamp, fit: ModelFit, retrain_days: int) -> tuple[ChurnModel | None, str]:
    """The saved model when it may score data as of ``as_of``, else None; and, in words, why."""
    metadata_path, model_path = directory / METADATA_NAME, directory / MODEL_NAME
    if retrain_days == 0 or not metadata_path.exists():
        return None, "no saved model yet" if retrain_days else "scoring.retrain_days = 0"
    try:
        metadata = json.loads(metadata_path.read_text())
        fitted_as_of = pd.Timestamp(metadata["as_of"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _refit(f"{metadata_path} is unreadable ({exc.__class__.__name__})")
    expected = fit.metadata()
    differing = [key for key, value in expected.items() if metadata.get(key) != value]
    if differing:
        return _refit(f"the saved model was fitted with another {_WHAT_DIFFERS[differing[0]]}")
    age_days = (as_of - fitted_as_of) / pd.Timedelta(days=1)
    if age_days < 0:
        return _refit("the saved model was fitted as of a later date than the one scored")
    if age_days >= retrain_days:
        return _refit(f"the saved model is {age_days:.0f} days old (scoring.retrain_days = {retrain_days})")
    try:
        model = joblib.load(model_path)
    except Exception as exc:  # noqa: BLE001 - unpickling a damaged file can raise almost anything; a refit mends it
        return _refit(f"{model_path} could not be loaded ({exc.__class__.__name__})", warn=True)
    if not isinstance(model, ChurnModel) or getattr(model, "training_window_", (None, None))[1] != fitted_as_of:
        return _refit(f"{model_path} does not match {metadata_path.name}", warn=True)
    if hasattr(getattr(model, "estimator_", None), "feature_names_in_"):
        # Fitted on data frames, before ChurnModel fed its estimators one float64 matrix: it would warn on every
        # prediction that the matrix has no column names. A refit gives the same scores from the same data.
        return _refit("the saved model was fitted on data frames, as earlier releases did")
    days = "the same day" if age_days < 1 else f"{age_days:.0f} day{'s' if age_days >= 2 else ''} before"
    return model, f"reused the model fitted {days} (refitted every {retrain_days} days)"


_WHAT_DIFFERS = {"version": "model version", "scikit_learn": "scikit-learn version", "feature_set": "feature set",
                 "horizon_setting": "scoring.horizon_days", "random_seed": "scoring.random_seed",
                 "inputs": "kind of data (orders, survey answers, email events)"}


def _refit(why: str, warn: bool = False) -> tuple[None, str]:
    log.log(logging.WARNING if warn else logging.INFO, "churn model refitted: %s", why)
    return None, why


def _write_private(path: Path, write: Callable[[BinaryIO], object]) -> None:
    aside = path.with_name(path.name + ".tmp")
    with open(os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        write(handle)
    os.replace(aside, path)
