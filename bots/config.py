"""The application's configuration: one TOML file, overridable from TOONIFY_* variables.

Each package owns the sections it reads; this module composes them, loads the file and
turns validation errors into one line per problem that names the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from inference.settings import (
    BrokerSettings,
    FacesSettings,
    InvertSettings,
    LimitsSettings,
    ModelsSettings,
    StyleSettings,
    WorkerSettings,
)
from storage.settings import QuotaSettings, StorageSettings

ENV_PREFIX = "TOONIFY_"
DEFAULT_PATH = Path("config.toml")


class ConfigError(Exception):
    """A configuration the application refuses; str() is ready to print, one line per problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class TelegramSettings(_Section):
    enabled: bool = False
    token: SecretStr | None = None
    admins: list[int] = Field(default_factory=list)
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""
    webhook_listen: str = "0.0.0.0"
    webhook_port: int = Field(8443, ge=1, le=65535)
    webhook_secret: SecretStr | None = None

    @model_validator(mode="after")
    def _webhook_needs_url(self) -> TelegramSettings:
        if self.mode == "webhook" and not self.webhook_url:
            raise ValueError("mode = 'webhook' needs webhook_url (the public HTTPS address)")
        return self


class DiscordSettings(_Section):
    enabled: bool = False
    token: SecretStr | None = None
    admins: list[int] = Field(default_factory=list)
    servers: list[int] = Field(default_factory=list)
    api_base_url: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"


class OpsSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)


def _default_styles() -> dict[str, StyleSettings]:
    return {"toon": StyleSettings(label="Toon", model="toon")}


class Settings(BaseSettings):
    """Top-level keys carry no underscore, so TOONIFY_SECTION_KEY maps to section.key."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        validate_default=True,
    )

    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    styles: dict[str, StyleSettings] = Field(default_factory=_default_styles)
    style: str = "toon"
    faces: FacesSettings = Field(default_factory=FacesSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    invert: InvertSettings = Field(default_factory=InvertSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)

    @model_validator(mode="after")
    def _default_style_exists(self) -> Settings:
        if self.style not in self.styles:
            raise ValueError(f"style {self.style!r} is not one of [styles]: {sorted(self.styles)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment wins over the file, which arrives as init arguments."""
        return env_settings, init_settings

    def secrets(self) -> list[str]:
        """Every secret value in this configuration, for the log redactor."""
        found = [self.telegram.token, self.telegram.webhook_secret, self.discord.token]
        return [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """The dotted key an error is about, and the problem."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return key, "unknown key"
    return key, str(error["msg"]).removeprefix("Value error, ")


def environment_keys(environ: Mapping[str, str]) -> dict[str, str]:
    """Dotted keys set from the environment, and the variable that set each.

    TOONIFY_SECTION_KEY sets section.key (a whole section when it holds JSON: TOONIFY_QUOTA).
    """
    found = {}
    for name in environ:
        if name.upper().startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            found[".".join(name[len(ENV_PREFIX) :].lower().split("_", 1))] = name
    return found


def origin(key: str, file: Path | None, environ: Mapping[str, str]) -> str:
    """Where the value of `key` came from: the variable that set it, else the file."""
    from_env = environment_keys(environ)
    parts = key.split(".")
    for depth in range(len(parts), 0, -1):
        name = from_env.get(".".join(parts[:depth]))
        if name is not None:
            return f"{name} (environment)"
    return str(file) if file is not None else "defaults"


def load_config(path: Path | None = None) -> Settings:
    """Read `path` (or config.toml when present) and apply TOONIFY_* overrides.

    An explicit path must exist; the default one is optional so that a bare environment works.
    Each problem names where the bad key or value came from: the file or the variable.
    """
    source = path or DEFAULT_PATH
    data: dict[str, Any] = {}
    file = source if path is not None or source.exists() else None
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{file}: file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key, problem = _describe(error)
            problems.append(f"{origin(key, file, os.environ)}: {key}: {problem}")
        raise ConfigError("\n".join(problems)) from None
