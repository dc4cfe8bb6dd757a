"""``taskyard init``: the files of a new project, and what it refuses.

The project it makes is installed and its tests run, outside this checkout,
by ``tests/integration/test_installed.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from workers.cli.main import main
from workers.cli.scaffold import package_name, scaffold
from workers.exceptions import ConfigError


def test_init_makes_a_project_named_after_its_directory(tmp_path: Path) -> None:
    written = scaffold(tmp_path / "ink-well")
    names = sorted(str(p.relative_to(tmp_path / "ink-well")) for p in written)
    assert names == [".gitignore", "README.md", "ink_well/__init__.py", "ink_well/drivers.py",
                     "ink_well/manager.py", "pyproject.toml", "settings.toml",
                     "tests/test_ink_well.py"]
    project = tmp_path / "ink-well"
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "ink-well"
    assert pyproject["project"]["entry-points"]["taskyard.managers"] == {
        "ink_well": "ink_well.manager:DigestManager"}
    assert set(pyproject["project"]["entry-points"]["taskyard.drivers.ink_well"]) == {
        "sha256sum", "fake"}
    settings = tomllib.loads((project / "settings.toml").read_text())
    assert settings["default"]["services"]["ink_well"] == {"manager": "ink_well",
                                                          "driver": "sha256sum"}
    assert settings["testing"]["services"]["ink_well"] == {"driver": "fake"}
    for path in written:
        if path.suffix == ".py":
            ast.parse(path.read_text(), str(path))  # every template filled in and valid
        assert "${" not in path.read_text(), path


def test_the_service_has_two_endpoints_a_driver_interface_and_two_drivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    scaffold(tmp_path / "demo")
    monkeypatch.syspath_prepend(str(tmp_path / "demo"))
    from demo.drivers import DigestDriver, FakeDigestDriver, Sha256sumDriver  # type: ignore
    from demo.manager import DigestManager  # type: ignore

    assert sorted(DigestManager.endpoints()) == ["digest", "lookup", "ping"]
    assert DigestManager.driver_interface is DigestDriver
    assert Sha256sumDriver().digest("x") == FakeDigestDriver().digest("x")


def test_init_refuses_to_write_over_an_existing_project(tmp_path: Path) -> None:
    project = tmp_path / "demo"
    project.mkdir()
    (project / "settings.toml").write_text("# mine\n")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        scaffold(project)
    assert (project / "settings.toml").read_text() == "# mine\n"
    assert sorted(p.name for p in project.iterdir()) == ["settings.toml"]


@pytest.mark.parametrize("name", ["workers", "managers", "drivers", "taskyard"])
def test_init_refuses_taskyards_own_package_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="a name taskyard keeps for its own"):
        scaffold(tmp_path / name)
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize(("project", "package"), [("demo", "demo"), ("Ink-Well", "ink_well"),
                                                  ("a.b", "a_b")])
def test_the_package_is_the_project_name_in_python(project: str, package: str) -> None:
    assert package_name(project) == package


def test_a_name_that_makes_no_package_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not make a package name"):
        package_name("9lives")


def test_the_init_command_says_what_it_made_and_what_to_do_next(tmp_path: Path) -> None:
    done = CliRunner().invoke(main, ["init", str(tmp_path / "demo")])
    assert done.exit_code == 0, done.output
    assert "made 8 files" in done.output and "taskyard call demo digest text=hello" in done.output
    again = CliRunner().invoke(main, ["init", str(tmp_path / "demo")])
    assert again.exit_code == 2 and "never writes over one" in again.output
