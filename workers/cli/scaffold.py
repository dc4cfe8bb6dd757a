"""``taskyard init DIR``: a new project with one working service, its drivers and its tests.

The files come from the templates beside this module (``template/``), with
``${project}``, ``${package}``, ``${service}`` and ``${taskyard_version}``
filled in: a manager with two endpoints, a driver interface with a real
driver (``sha256sum`` through the executor) and a fake one, settings, a
``pyproject.toml`` registering their short names, and tests at the three
levels of the testing kit.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from workers.core.keys import VERSION
from workers.exceptions import ConfigError

TEMPLATE = Path(__file__).with_name("template")
#: Names a project's package may not take: taskyard's own packages, and test folders.
RESERVED = frozenset({"workers", "managers", "drivers", "taskyard", "tests", "test"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def package_name(project: str) -> str:
    """The Python package (and service) name of a project: lower case, ``-`` as ``_``."""
    name = project.strip().lower().replace("-", "_").replace(".", "_")
    if not _NAME.match(name):
        raise ConfigError(
            f"project name {project!r} does not make a package name: use letters, digits, "
            "'-' and '_', starting with a letter (give one with --name)"
        )
    if name in RESERVED:
        raise ConfigError(
            f"project name {project!r} would make a package {name!r}, a name taskyard keeps "
            f"for its own ({', '.join(sorted(RESERVED))}); choose another with --name"
        )
    return name


def _target(relative: Path, package: str) -> Path:
    parts = list(relative.parts)
    if parts[0] == "package":
        parts[0] = package
    if parts == ["tests", "test_service.py.tmpl"]:
        parts[-1] = f"test_{package}.py.tmpl"
    if parts == ["gitignore.tmpl"]:
        parts = [".gitignore.tmpl"]
    return Path(*parts).with_suffix("")


def scaffold(directory: Path, project: str | None = None) -> list[Path]:
    """Write a new project into ``directory`` (new or empty); the files written.

    Raises :class:`ConfigError` (writing nothing) when ``directory`` holds
    anything already: an existing project is never overwritten.
    """
    directory = Path(directory)
    project = project or directory.resolve().name
    package = package_name(project)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(
            f"{directory} exists and is not empty: taskyard init makes a new project and never "
            "writes over one (give a new directory)"
        )
    values = {"project": project, "package": package, "service": package,
              "taskyard_version": VERSION}
    written = []
    for source in sorted(TEMPLATE.rglob("*.tmpl")):
        target = directory / _target(source.relative_to(TEMPLATE), package)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(source.read_text()).substitute(values))
        written.append(target)
    return written
