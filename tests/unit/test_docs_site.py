"""The documentation site's references cannot drift from the code.

The hooks of ``docs/hooks/reference.py`` generate the settings page from the packaged
``defaults.toml`` and fail ``mkdocs build --strict`` (run by ``.ci/run``) when the API
pages leave out a name of ``workers.__all__`` or the CLI page a command; these tests
check the same without building the site.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import re
import sys
from types import ModuleType
from typing import Any

import pytest

import workers
from tests.conftest import REPO_ROOT

pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")

DOCS = REPO_ROOT / "docs"
DEFAULTS = REPO_ROOT / "workers" / "core" / "defaults.toml"


def load_hooks() -> ModuleType:
    path = DOCS / "hooks" / "reference.py"
    spec = importlib.util.spec_from_file_location("taskyard_docs_hooks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


def rows(markdown: str) -> dict[str, list[str]]:
    """key -> its cells as text, for every row of the generated settings tables."""
    found = {}
    for line in markdown.splitlines():
        cells = [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
                 for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and line.startswith("| <code"):
            found[cells[0]] = cells[1:]
    return found


def test_the_settings_page_names_every_key_of_the_defaults_with_its_default_and_meaning() -> None:
    text = DEFAULTS.read_text()
    generated = rows(hooks.settings_markdown(text))
    assert set(generated) == hooks.settings_keys(text)
    assert "rpc_timeout" in generated and "flower.port" in generated
    assert generated["rpc_timeout"] == ["30", "seconds", "seconds Client.call waits for an answer"]
    assert generated["redis_url"][0] == '"redis://127.0.0.1:6379/0"'
    for key, (default, _unit, meaning) in generated.items():
        assert default and meaning, key


def test_every_number_of_the_defaults_has_a_unit() -> None:
    for table in hooks.settings_tables(DEFAULTS.read_text()):
        for setting in table.settings:
            number = isinstance(setting.default, (int, float)) and not isinstance(
                setting.default, bool)
            assert (setting.unit != "-") == number, setting


def test_a_number_without_a_unit_fails_the_build() -> None:
    with pytest.raises(hooks.PluginError, match="the number widgets = 3 has no unit"):
        hooks.settings_markdown("[default]\nwidgets = 3   # how many to make\n")


def test_the_settings_page_keeps_the_place_the_table_goes() -> None:
    assert hooks.SETTINGS_MARKER in (DOCS / hooks.SETTINGS_PAGE).read_text()


def documented_objects() -> tuple[set[int], set[str]]:
    """The objects the API pages render (``::: path``) and their explicit anchors."""
    objects, anchors = set(), set()
    for page in (DOCS / hooks.API_PAGES).glob("*.md"):
        text = page.read_text()
        anchors |= set(re.findall(r"\{#([\w.]+)\}", text))
        for path in re.findall(r"^::: ([\w.]+)", text, re.MULTILINE):
            module, _, name = path.rpartition(".")
            try:
                objects.add(id(getattr(importlib.import_module(module), name)))
            except ModuleNotFoundError:
                importlib.import_module(path)
    return objects, anchors


def test_the_api_pages_name_every_name_of_workers_all() -> None:
    objects, anchors = documented_objects()
    missing = [name for name in workers.__all__
               if f"workers.{name}" not in anchors and id(getattr(workers, name)) not in objects]
    assert not missing, f"add a `::: path` for each to {hooks.API_PAGES}: {missing}"


def test_the_api_pages_render_the_manager_and_the_testing_kit() -> None:
    from managers import Manager, endpoint, periodic_task
    from workers.testing import InProcessNode, NodeProcess, RemoteFleet, build_manager

    objects, _ = documented_objects()
    needed: list[Any] = [Manager, endpoint, periodic_task, build_manager, InProcessNode,
                         NodeProcess, RemoteFleet]
    assert all(id(obj) in objects for obj in needed)


def test_the_build_check_names_what_the_api_pages_leave_out() -> None:
    anchors = {f"x.{name}" for name in workers.__all__} - {"x.Handle"}
    assert hooks.missing_api_names(anchors) == ["Handle"]


def test_the_cli_page_summary_names_every_command_and_no_other() -> None:
    text = (DOCS / hooks.CLI_PAGE).read_text()
    summary = set()
    for cell in re.findall(r"^\| `(taskyard [^`]*)`", text, re.MULTILINE):
        summary.add(" ".join(w for w in cell.split() if re.fullmatch(r"[a-z]+", w)))
    assert summary == set(hooks.cli_commands()) - {"taskyard"}
    assert "::: mkdocs-click" in text  # and every option, from the command's help


def test_the_nav_lists_every_page() -> None:
    config = (REPO_ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    listed = set(re.findall(r":\s+([\w/.-]+\.md)$", config, re.MULTILINE))
    assert pages == listed
