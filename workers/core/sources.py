"""Where a process's settings come from: the package defaults and the project's files.

The framework defaults ship in the package (``defaults.toml``). A project's
own settings are the files named in ``TASKYARD_SETTINGS`` (comma-separated),
or else the ``settings.toml`` of the current directory or of its nearest
parent that has one; the project directory (the first file's) may hold a
``.secrets.toml``. Relative paths in the settings are relative to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from workers.exceptions import ConfigError

#: The framework defaults, shipped in the package.
DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
#: The file a project keeps its settings in, found from the current directory upwards.
SETTINGS_FILE = "settings.toml"
#: The file beside it that holds secrets (never committed).
SECRETS_FILE = ".secrets.toml"


@dataclass(frozen=True)
class SettingsFiles:
    """Where a process's settings come from."""

    #: The project's own files, in order (empty: only the package defaults).
    files: tuple[Path, ...]
    #: The directory relative paths are relative to.
    project_dir: Path
    #: ``.secrets.toml`` of the project directory, when it exists.
    secrets: Path | None

    def all(self) -> list[Path]:
        """Every file dynaconf reads, in order: defaults, project files, secrets."""
        return [DEFAULTS_FILE, *self.files, *([self.secrets] if self.secrets else [])]


def find_settings(environ: Mapping[str, str] | None = None,
                  cwd: Path | None = None) -> SettingsFiles:
    """The project's settings files: ``TASKYARD_SETTINGS``, else the nearest ``settings.toml``."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    files: list[Path] = []
    named = [p.strip() for p in environ.get("TASKYARD_SETTINGS", "").split(",") if p.strip()]
    for name in named:
        path = (cwd / name).resolve()
        if not path.is_file():
            raise ConfigError(
                f"TASKYARD_SETTINGS names {name!r}, which is not a file "
                "(give comma-separated paths to existing TOML files)"
            )
        files.append(path)
    if not files:
        for directory in (cwd, *cwd.parents):
            if (directory / SETTINGS_FILE).is_file():
                files.append((directory / SETTINGS_FILE).resolve())
                break
    project_dir = files[0].parent if files else cwd.resolve()
    secrets = project_dir / SECRETS_FILE
    return SettingsFiles(tuple(files), project_dir, secrets if secrets.is_file() else None)
