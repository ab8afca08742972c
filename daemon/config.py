"""The daemon's TOML configuration: strict, so a typo is an error naming the key."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

import msgspec


class ConfigError(Exception):
    pass


class DaemonSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    socket: str = "/run/runyard/runyard.sock"
    socket_mode: str = "0660"
    socket_group: str = ""
    data_dir: str = "/var/lib/runyard"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    admins: list[str] = []
    max_frame_bytes: int = 4 * 1024 * 1024
    events_retained: int = 100_000


class DefaultsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image: str = "runyard-base:bookworm-py3"
    stop_grace_seconds: int = 10


class LocalHostSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    docker_socket: str = "/var/run/docker.sock"
    max_concurrent: int = 4
    pull: Literal["missing", "never"] = "missing"
    pull_timeout_seconds: int = 300


class StoreSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: Literal["local"] = "local"
    path: str = ""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    daemon: DaemonSection = msgspec.field(default_factory=DaemonSection)
    defaults: DefaultsSection = msgspec.field(default_factory=DefaultsSection)
    local: LocalHostSection = msgspec.field(default_factory=LocalHostSection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)

    @property
    def data_dir(self) -> Path:
        return Path(self.daemon.data_dir)

    @property
    def outputs_dir(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_dir / "outputs"

    @property
    def socket_mode(self) -> int:
        return int(self.daemon.socket_mode, 8)


def _check(config: Config) -> None:
    try:
        mode = int(config.daemon.socket_mode, 8)
    except ValueError:
        raise ConfigError(
            f"daemon.socket_mode: {config.daemon.socket_mode!r} is not an octal mode like \"0660\""
        ) from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"daemon.socket_mode: {config.daemon.socket_mode!r} is out of range")
    if config.local.max_concurrent < 1:
        raise ConfigError("local.max_concurrent: must be at least 1")
    if config.defaults.stop_grace_seconds < 0:
        raise ConfigError("defaults.stop_grace_seconds: must not be negative")
    if config.daemon.max_frame_bytes < 64 * 1024:
        raise ConfigError("daemon.max_frame_bytes: must be at least 65536")


def _resolve_paths(config: Config, base: Path) -> None:
    """Relative paths in a config file are relative to that file, not the cwd."""

    def resolve(value: str) -> str:
        if not value:
            return value
        path = Path(os.path.expanduser(value))
        return str(path if path.is_absolute() else (base / path).resolve())

    config.daemon.socket = resolve(config.daemon.socket)
    config.daemon.data_dir = resolve(config.daemon.data_dir)
    config.store.path = resolve(config.store.path)
    config.local.docker_socket = resolve(config.local.docker_socket)


def parse_config(text: str, *, source: str = "<config>", base: Path | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        # msgspec names the path as `$.section.key`; say it the way the file does.
        raise ConfigError(f"{source}: {str(exc).replace('$.', '')}") from None
    try:
        _check(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _resolve_paths(config, base or Path.cwd())
    return config


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return parse_config("", source="<defaults>")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(text, source=str(path), base=path.resolve().parent)
