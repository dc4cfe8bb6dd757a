"""MkDocs hooks: the references that are generated from the code, so they cannot drift.

- The settings page: every key of the packaged ``workers/core/defaults.toml``, with its
  default, its unit and its meaning (the comments of that file), put where the page says
  ``<!-- generated: settings -->``. A number without a unit fails the build.
- The API pages: the build fails when a name of ``workers.__all__`` has no entry on them.
- The CLI page: the build fails when a ``taskyard`` command is missing from it.
- Docstrings written for Sphinx (``:func:`x```, ``::`` before a literal block) read as
  plain code on the API pages.

``mkdocs.yml`` names this file in ``hooks``; ``tests/unit/test_docs_site.py`` calls its
functions directly.
"""

from __future__ import annotations

import html
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # dynaconf, a dependency, vendors the same parser
    from dynaconf.vendor import tomllib

import click
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ROOT / "workers" / "core" / "defaults.toml"
SETTINGS_MARKER = "<!-- generated: settings -->"
SETTINGS_PAGE = "reference/settings.md"
CLI_PAGE = "reference/cli.md"
API_PAGES = "reference/api/"

#: Units of the numbers whose own comment does not start with one ("seconds ...").
UNITS = {
    "publish_wait_replicas": "replicas",
    "max_message_bytes": "bytes",
    "flower.port": "TCP port",
}


@dataclass
class Setting:
    key: str  # dotted, below [default]: "rpc_timeout", "flower.port"
    default: Any
    unit: str
    meaning: str


@dataclass
class Table:
    name: str  # "" for [default] itself, else "flower", "security", ...
    comment: str
    settings: list[Setting]


def _comment(lines: list[str]) -> str:
    return " ".join(line.strip() for line in lines).strip()


def settings_tables(text: str) -> list[Table]:
    """Every table below ``[default]`` of a defaults file, each key with its meaning.

    A key's meaning is its own comment (on its line, and the indented comment lines under
    it); else the comment block right above its group of keys (no blank line between);
    else the comment above its table's header.
    """
    values = tomllib.loads(text)["default"]
    tables: list[Table] = []
    table: Table | None = None
    block: list[str] = []  # the comment lines just read
    group = ""  # the comment of the keys since the last blank line
    first: Setting | None = None  # the first key of that group
    last: Setting | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            if block and first is not None:  # a note under a group of keys
                first.meaning += " " + _comment(block)
            block, group, first, last = [], "", None, None
            continue
        if raw.startswith("#"):
            block.append(line.lstrip("#").strip() if not line.startswith("#   ")
                         else line[1:])
            continue
        if raw[0].isspace() and raw.lstrip().startswith("#") and last is not None:
            last.meaning += " " + raw.lstrip().lstrip("#").strip()
            continue
        header = re.fullmatch(r"\[([\w.]+)\]", line)
        if header:
            name = header.group(1)
            table = None
            if name == "default" or name.startswith("default."):
                table = Table(name.removeprefix("default").lstrip("."), "\n".join(block), [])
                tables.append(table)
            block, group, first, last = [], "", None, None
            continue
        assignment = re.match(r"(\w+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if assignment is None or table is None:
            continue
        if block:
            group, block = _comment(block), []
        name, own = assignment.group(1), assignment.group(3) or ""
        key = f"{table.name}.{name}" if table.name else name
        value = values
        for part in key.split("."):
            value = value[part]
        if own:
            meaning = own.strip()
        elif group:
            meaning = group if first is None else "as above"
        else:
            meaning = "see the table's note above" if table.comment else ""
        last = Setting(key, value, unit_of(key, value, own.strip() or group), meaning)
        table.settings.append(last)
        first = first or last
    for table in tables:
        # A table whose keys are the project's own (celery, services...): the table is the key.
        if not table.settings and table.name:
            meaning = _comment([line for line in table.comment.splitlines()
                                if not line.startswith("  ")])
            table.settings.append(Setting(table.name, {}, "-", meaning))
    return tables


def unit_of(key: str, default: Any, comment: str) -> str:
    """The unit of a number (from its comment, else :data:`UNITS`); ``-`` for the rest."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return "-"
    name = key.rsplit(".", 1)[-1]
    if comment.startswith("seconds") or re.search(rf"\b{name} seconds\b", comment):
        return "seconds"
    if key in UNITS:
        return UNITS[key]
    raise PluginError(f"{DEFAULTS.name}: the number {key} = {default!r} has "
                      "no unit: start its comment with it (\"seconds ...\") or add it to "
                      f"UNITS in {Path(__file__).name}")


def _code(text: str) -> str:
    """Inline code that never breaks inside (a key): see stylesheets/extra.css."""
    return f'<code class="whole">{html.escape(text)}</code>'


def _literal(value: Any) -> str:
    text = "{}" if isinstance(value, dict) else json.dumps(value)
    return f"<code>{html.escape(text)}</code>"


def _cell(text: str) -> str:
    # "see docs/operations.md" in a comment: a link to that page, from reference/settings.md.
    text = re.sub(r"\bdocs/([\w-]+)\.md\b", r"[\1](../\1.md)", text)
    text = re.sub(r"(?<![`\w])(TASKYARD_[A-Z_]+|[\w.]+\.toml|\[default[\w.]*\])", r"`\1`", text)
    return text.replace("|", "\\|")


def settings_markdown(text: str) -> str:
    """The settings reference: one section per table, one row per key."""
    out = []
    for table in settings_tables(text):
        title = f"`[default.{table.name}]`" if table.name else "`[default]`"
        out.append(f"### {title} {{#{table.name or 'top-level'}}}\n")
        prose = [line for line in table.comment.splitlines() if not line.startswith("  ")]
        example = [line for line in table.comment.splitlines() if line.startswith("  ")]
        if prose and table.name:
            out.append(_cell(_comment(prose)) + "\n")
        if example:
            out.append("```toml\n" + textwrap.dedent("\n".join(example)) + "\n```\n")
        out.append("| key | default | unit | meaning |\n|---|---|---|---|")
        for s in table.settings:
            cells = [_code(s.key), _literal(s.default), s.unit, _cell(s.meaning)]
            out.append(f"| {' | '.join(cells)} |")
        out.append("")
    return "\n".join(out)


def settings_keys(text: str) -> set[str]:
    """Every key of a defaults file below ``[default]``, dotted (tables with keys left out)."""
    def walk(prefix: str, table: dict[str, Any]) -> set[str]:
        found = set()
        for name, value in table.items():
            key = f"{prefix}{name}"
            found |= walk(f"{key}.", value) if isinstance(value, dict) and value else {key}
        return found
    return walk("", tomllib.loads(text)["default"])


def cli_commands() -> list[str]:
    """Every command of the ``taskyard`` click app, as typed: ``taskyard services disable``."""
    from workers.cli.main import main

    found = []

    def walk(command: click.Command, path: str) -> None:
        found.append(path)
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                walk(sub, f"{path} {name}")

    walk(main, "taskyard")
    return found


def public_names() -> list[str]:
    import workers

    return list(workers.__all__)


def missing_api_names(anchors: set[str]) -> list[str]:
    """The names of ``workers.__all__`` with no anchor on the API pages."""
    return [name for name in public_names()
            if not any(a == f"workers.{name}" or a.endswith(f".{name}") for a in anchors)]


_ROLE = re.compile(r":(?:func|class|meth|mod|attr|exc|data|obj):(?=<code>)")
_TILDE = re.compile(r"<code>~(?:[\w]+\.)*(\w+)</code>")


def plain_roles(html: str) -> str:
    """Sphinx roles and ``::`` as plain code: ``:func:`x``` reads ``x``."""
    html = _ROLE.sub("", html)
    html = _TILDE.sub(r"<code>\1</code>", html)
    html = html.replace("<p>::</p>", "")
    return re.sub(r"::</p>", ":</p>", html)


# -- the hooks --------------------------------------------------------------------------

_anchors: dict[str, set[str]] = {}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri == SETTINGS_PAGE:
        if SETTINGS_MARKER not in markdown:
            raise PluginError(f"{SETTINGS_PAGE} has lost its marker {SETTINGS_MARKER}")
        return markdown.replace(SETTINGS_MARKER, settings_markdown(DEFAULTS.read_text()))
    return markdown


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri.startswith(API_PAGES):
        html = plain_roles(html)
    if page.file.src_uri.startswith(API_PAGES) or page.file.src_uri == CLI_PAGE:
        _anchors[page.file.src_uri] = set(re.findall(r'id="([^"]+)"', html))
        _anchors[page.file.src_uri + "#text"] = {html}
    return html


def on_post_build(config: Any) -> None:
    api = {a for page, ids in _anchors.items() if page.startswith(API_PAGES)
           and not page.endswith("#text") for a in ids}
    missing = missing_api_names(api)
    if missing:
        raise PluginError(f"the API pages ({API_PAGES}) leave out {', '.join(missing)} "
                          "of workers.__all__: add a `::: path` entry for each")
    cli = next(iter(_anchors.get(CLI_PAGE + "#text", {""})))
    absent = [c for c in cli_commands() if c not in re.sub(r"<[^>]+>", "", cli)]
    if absent:
        raise PluginError(f"{CLI_PAGE} leaves out {', '.join(absent)}")
