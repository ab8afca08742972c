"""The TUI's own settings file: remapped keys and default metadata columns.

``~/.config/runyard/tui.toml`` (or ``$RUNYARD_TUI_CONFIG``)::

    [keys]                  # binding id = comma-separated keys; ids are listed by `runyard tui --keys`
    "queue.stop" = "s,x"
    [queue]
    columns = ["loss", "accuracy"]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(Exception):
    pass


@dataclass
class Settings:
    keys: dict[str, str] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)


def settings_path() -> Path:
    env = os.environ.get("RUNYARD_TUI_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "runyard" / "tui.toml"


def load_settings(path: Path | None = None) -> Settings:
    path = path or settings_path()
    if not path.exists():
        return Settings()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: {exc}") from None
    keys = data.get("keys", {})
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
        raise SettingsError(f"{path}: [keys] maps binding ids to key strings, like \"queue.stop\" = \"s\"")
    columns = data.get("queue", {}).get("columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise SettingsError(f"{path}: [queue] columns is a list of metadata keys")
    return Settings(keys=dict(keys), columns=list(columns))
