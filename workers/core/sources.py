"""Where a process's settings come from: the package defaults and the project's files.

The framework defaults ship in the package (``defaults.toml``). A project's
own settings are the files named in ``TASKYARD_SETTINGS`` (comma-separated),
or else the ``settings.toml`` of the current directory or of its nearest
parent that has one; the project directory (the first file's) may hold a
``.secrets.toml``. Relative paths in the settings are relative to it.
:func:`read_settings` reads them all with dynaconf (and the ``TASKYARD_*``
environment variables) into plain dicts; checking them is
:mod:`workers.core.config`'s work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf

from workers.exceptions import ConfigError

ENVIRONMENTS = ("development", "testing", "production")
DEFAULT_ENV = "development"

#: dynaconf's own bookkeeping keys, never part of taskyard's settings.
_INTERNAL_KEYS = frozenset({"SETTINGS", "ENV", "LOAD_DOTENV", "ENV_FOR_DYNACONF", "ROOT_PATH"})

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


def read_settings(where: SettingsFiles) -> tuple[str, dict[str, Any]]:
    """The environment's name and the merged settings, keys lower-cased (see :func:`_plain`).

    Reads the files and this process's ``TASKYARD_*`` environment variables.
    """
    env = os.environ.get("TASKYARD_ENV") or DEFAULT_ENV
    if env not in ENVIRONMENTS:
        raise ConfigError(f"TASKYARD_ENV = {env!r}: expected one of {', '.join(ENVIRONMENTS)}")
    try:
        settings = Dynaconf(
            envvar_prefix="TASKYARD",
            environments=True,
            env_switcher="TASKYARD_ENV",
            env=env,
            settings_files=[str(p) for p in where.all()],
            root_path=str(where.project_dir),
            merge_enabled=True,
            load_dotenv=False,
        )
        data = settings.as_dict()
    except Exception as exc:  # a TOML syntax error, an unreadable file
        raise ConfigError(f"cannot read the settings ({exc})") from exc
    raw = {
        str(k).lower(): _plain(v, _STRUCTURE_DEPTH.get(str(k).lower(), 1))
        for k, v in data.items()
        if k not in _INTERNAL_KEYS
    }
    return env, raw


def _plain(value: Any, lower_depth: int = 0) -> Any:
    """dynaconf's Box objects as dicts and lists; keys lower-cased ``lower_depth`` levels deep.

    dynaconf keeps the case of keys from files but upper-cases keys that only
    an environment variable sets (``TASKYARD_CELERY__WORKER_CONCURRENCY``).
    Settings names are lower-case, so the structural levels are folded;
    deeper levels are data and keep their case. When a key appears in both
    cases, the upper-case one came from the environment and wins.
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        from_env: set[str] = set()
        for key, item in value.items():
            key = str(key)
            name = key.lower() if lower_depth > 0 else key
            if name in from_env:
                continue
            out[name] = _plain(item, lower_depth - 1)
            if name != key:
                from_env.add(name)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, lower_depth - 1) for v in value]
    return value


#: How many levels of each top-level table are settings names (folded to lower case).
_STRUCTURE_DEPTH = {"services": 3, "celery": 1, "broker_transport_options": 1, "flower": 1,
                    "security": 1, "tls": 1}
