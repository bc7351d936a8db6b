"""Settings: `settings.toml` plus `RETENTION_...` environment overrides, loaded once into one typed object.

Secrets never live here. They are read by name from the environment or the OS keyring (``read_secret``), so a
settings dump, an error message or the store can never contain one.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connectors.base import ConfigError

ENV_PREFIX = "RETENTION_"
SETTINGS_FILE_ENV = "RETENTION_SETTINGS"
KEYRING_SERVICE = "retention-sync"
# Keys that hold credentials. Finding one in the toml file is an error, never a silent accept.
SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "private_key", "client_secret")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(_Section):
    url: str = ""  # empty: the SQLite file in data_dir; else a SQLAlchemy URL, e.g. postgresql+psycopg://host/db
    busy_timeout_s: float = Field(10.0, ge=0.1, le=600)

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, url: str) -> str:
        if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
            raise ValueError("must not contain a password; put it in RETENTION_STORE_PASSWORD or ~/.pgpass")
        return url


class CsvSettings(_Section):
    date_order: Literal["auto", "DMY", "MDY"] = "auto"
    max_bad_row_fraction: float = Field(0.1, ge=0.0, le=1.0)
    max_text_chars: int = Field(1_048_576, ge=1_000, le=16_777_216)


class HubSpotSettings(_Section):
    enabled: bool = False
    batch_size: int = Field(100, ge=1, le=100)  # HubSpot: batch endpoints take at most 100 inputs
    # Client-side limits, kept under HubSpot's (free and starter: 100 requests / 10 s, search 4-5 / s).
    requests_per_10s: int = Field(90, ge=1, le=1_000)
    searches_per_s: int = Field(4, ge=1, le=50)
    lookback_minutes: int = Field(10, ge=0, le=1_440)  # re-read this much before the cursor: search indexes lag
    timeout_s: float = Field(30.0, ge=1.0, le=300.0)
    property_group: str = "retention"
    property_group_label: str = "Retention"


class MailchimpSettings(_Section):
    enabled: bool = False
    audiences: tuple[str, ...] = ()  # the allow-list: no other audience is ever read or written
    batch_size: int = Field(500, ge=1, le=500)  # Mailchimp: static segment add/remove takes at most 500 emails
    max_connections: int = Field(8, ge=1, le=10)  # Mailchimp refuses an account's 11th simultaneous connection
    timeout_s: float = Field(30.0, ge=1.0, le=120.0)
    lookback_minutes: int = Field(10, ge=0, le=1_440)
    tag_prefix: str = Field("rs:", min_length=1, max_length=20)
    add_new_contacts: bool = False  # never add people who are not on the audience, unless told to
    status_if_new: Literal["pending", "transactional"] = "pending"  # pending = double opt-in


class FormsSettings(_Section):
    """One survey tool: Typeform, SurveyMonkey or Google Forms."""

    enabled: bool = False
    forms: tuple[str, ...] = ()  # form / survey ids to read; empty = every form the credential can see
    lookback_minutes: int = Field(10, ge=0, le=1_440)
    timeout_s: float = Field(30.0, ge=1.0, le=300.0)
    # Which question holds the respondent's email, per form id, for forms that neither collect it nor pass it
    # in a hidden field: { "FORM_ID" = "QUESTION_ID" }.
    email_question: dict[str, str] = Field(default_factory=dict)


class ScoringSettings(_Section):
    horizon_days: int = Field(0, ge=0, le=730)  # days without an order that count as churned; 0 = from the purchase cycle
    medium_risk: float = Field(0.4, gt=0.0, lt=1.0)
    high_risk: float = Field(0.7, gt=0.0, lt=1.0)
    random_seed: int = Field(7, ge=0)
    # A saved model younger than this is reused, so scores move only when the data does; 0 = refit on every run.
    retrain_days: int = Field(7, ge=0, le=365)
    # From this many orders, email events and survey answers in the store, a sync scores in a process of its own,
    # whose memory goes back to the system when it ends; 0 = always.
    own_process_from: int = Field(100_000, ge=0)

    def what_scores_depend_on(self) -> str:
        """These settings as scores depend on them, for the keys that say when scores (and the report's cached
        backtest) must be computed again. Where or how fast scores are computed changes none of them."""
        return self.model_dump_json(exclude={"own_process_from"})


class ScheduleSettings(_Section):
    """`retention schedule`: when syncs run, and the lease that keeps two of them from running at once."""

    cron: str = ""  # a crontab line (minute hour day month weekday) in the settings' time zone; empty: use the interval
    interval_minutes: int = Field(60, ge=1, le=10_080)
    # A run that could not start on time (machine asleep, previous run still going) still starts this late; later
    # than that it is logged as missed, and the runs missed meanwhile are coalesced into one.
    misfire_grace_s: int = Field(300, ge=1, le=86_400)
    lease_s: int = Field(300, ge=5, le=86_400)  # a killed run's lease lapses after this; renewed every third of it

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        if cron.strip():
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(cron, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f'is not a cron expression ({exc}); write five fields, minute hour day month weekday, e.g. "0 3 * * *"') from None
        return cron.strip()


class SyncSettings(_Section):
    # Contact fields kept the same in HubSpot and Mailchimp (both ways; rule in sync/linking.py); empty = none.
    contact_fields: tuple[Literal["first_name", "last_name", "phone", "company_name"], ...] = (
        "first_name", "last_name", "phone", "company_name")


class Settings(BaseSettings):
    """Everything the tool is told. Built once by ``load_settings`` and passed down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    data_dir: Path = Path(".retention")
    timezone: str = "UTC"
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    store: StoreSettings = StoreSettings()
    csv: CsvSettings = CsvSettings()
    hubspot: HubSpotSettings = HubSpotSettings()
    mailchimp: MailchimpSettings = MailchimpSettings()
    typeform: FormsSettings = FormsSettings()
    surveymonkey: FormsSettings = FormsSettings()
    google_forms: FormsSettings = FormsSettings()
    scoring: ScoringSettings = ScoringSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    sync: SyncSettings = SyncSettings()

    # Where these settings came from, for messages; not a setting.
    source_file: Path | None = Field(None, exclude=True)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone name such as Europe/Berlin or America/New_York") from None
        return name

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'retention.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which is passed in as init values.
        return (env_settings, init_settings)


def find_settings_file(explicit: Path | None = None) -> Path | None:
    """`--settings`, then $RETENTION_SETTINGS, then ./settings.toml; None means built-in defaults."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such settings file — run `retention init` to create one")
        return explicit
    from_env = os.environ.get(SETTINGS_FILE_ENV)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"{SETTINGS_FILE_ENV}={from_env}: no such settings file")
        return path
    local = Path("settings.toml")
    return local if local.is_file() else None


def load_settings(path: Path | None = None) -> Settings:
    """Read, validate and return the settings; every problem becomes one ConfigError line."""
    path = find_settings_file(path)
    values: dict[str, Any] = {}
    label = str(path) if path else "built-in defaults"
    if path is not None:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}) — fix that line or run `retention init` elsewhere") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}) — save it as UTF-8") from None
        _refuse_secrets(values, label)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, label)) from None
    if path is not None and not settings.data_dir.is_absolute():
        # Relative paths are relative to the settings file, not to wherever the command runs.
        settings = settings.model_copy(update={"data_dir": path.parent.resolve() / settings.data_dir})
    return settings.model_copy(update={"source_file": path})


def _refuse_secrets(values: dict[str, Any], label: str, prefix: str = "") -> None:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            _refuse_secrets(value, label, f"{dotted}.")
        elif any(word in key.lower() for word in SECRET_WORDS):
            env_name = ENV_PREFIX + dotted.replace(".", "_").upper()
            raise ConfigError(
                f"{label}: {dotted} looks like a secret, and secrets are never read from a file — "
                f"remove it and set {env_name} or store it in the OS keyring (service {KEYRING_SERVICE!r})"
            )


def _one_line(exc: ValidationError, label: str) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    dotted = ".".join(loc)
    env_name = ENV_PREFIX + "__".join(part.upper() for part in loc)
    where = f"{env_name} (environment)" if env_name in {k.upper() for k in os.environ} else f"{label}: {dotted}"
    got = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys here: {', '.join(sorted(known))}"
        return f"{where} is not a known setting — {hint}"
    bounds = _bounds(loc)
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"} and bounds:
        return f"{where} must be between {bounds[0]} and {bounds[1]} (got {got!r})"
    if kind == "literal_error":
        return f"{where} must be one of {error['ctx']['expected']} (got {got!r})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where} {message[0].lower()}{message[1:]} (got {got!r})"


def _field_info(loc: list[str]) -> Any:
    model: Any = Settings
    info = None
    for part in loc:
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        info = fields.get(part)
        if info is None:
            return None
        model = info.annotation
    return info


def _known_keys(loc: list[str]) -> list[str]:
    model: Any = Settings if not loc else _field_info(loc).annotation
    return [f.alias or name for name, f in model.model_fields.items() if name != "source_file"]


def _bounds(loc: list[str]) -> tuple[Any, Any] | None:
    info = _field_info(loc)
    if info is None:
        return None
    low = next((m.ge if isinstance(m, Ge) else m.gt for m in info.metadata if isinstance(m, (Ge, Gt))), None)
    high = next((m.le if isinstance(m, Le) else m.lt for m in info.metadata if isinstance(m, (Le, Lt))), None)
    return (low, high) if low is not None and high is not None else None


def read_secret(name: str) -> str | None:
    """A credential by name ("hubspot_token"): $RETENTION_HUBSPOT_TOKEN first, then the OS keyring."""
    from_env = os.environ.get(ENV_PREFIX + name.upper())
    if from_env:
        return from_env
    try:
        import keyring
        from keyring.errors import KeyringError

        backend = keyring.get_keyring()
        # A plaintext file backend would put the token on disk unencrypted: refuse it rather than use it.
        if type(backend).__module__.startswith(("keyrings.alt", "keyring.backends.fail", "keyring.backends.null")):
            return None
        return keyring.get_password(KEYRING_SERVICE, name)
    except (KeyringError, RuntimeError):
        return None
