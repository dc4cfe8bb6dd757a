"""drivers/loading.py: dotted paths, short names, building drivers and the interface check."""

from __future__ import annotations

import re
import sys
import types
from abc import ABC, abstractmethod
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

import drivers.volume.fake as fake_module
from drivers import loading
from drivers.executor import Executor, RecordingExecutor
from drivers.loading import LoadError, load_driver, load_manager_class, load_object
from drivers.volume.base import VolumeDriver
from drivers.volume.fake import FakeVolumeDriver
from drivers.volume.file import FileVolumeDriver
from managers.volume import VolumeManager
from workers.core import keys as constants
from workers.exceptions import ConfigError

HERE = __name__
KEY = "services.volume.driver"


# -- objects the tests load by path -------------------------------------------------------


class Widget:
    def __init__(self, size: int = 1, colour: str = "red") -> None:
        self.size = size
        self.colour = colour

    class Part:
        pass


def make_widget(size: int = 1) -> Widget:
    return Widget(size=size, colour="made")


WIDGET = Widget(size=9)


class Speaker(ABC):
    """A small driver interface."""

    @abstractmethod
    def greet(self) -> str: ...

    @abstractmethod
    def wave(self) -> None: ...

    def helper(self) -> str:  # not abstract: never required
        return "help"


class LoudSpeaker(Speaker):
    def __init__(self, volume: int = 5, executor: Any = None) -> None:
        self.volume = volume
        self.executor = executor

    def greet(self) -> str:
        return "HELLO"

    def wave(self) -> None:
        return None


class DuckSpeaker:
    """Implements Speaker without subclassing it."""

    def greet(self) -> str:
        return "quack"

    def wave(self) -> None:
        return None


class HalfSpeaker(Speaker):
    """Subclasses the interface but leaves ``wave`` abstract."""

    def greet(self) -> str:
        return "half"


class MuteSpeaker:
    """Has neither method."""


class StringGreetSpeaker:
    """``greet`` is there but is not callable."""

    greet = "hello"

    def wave(self) -> None:
        return None


constructed: list[dict[str, Any]] = []


class FragileSpeaker:
    """Missing ``wave``, and a constructor that refuses every option."""

    def __init__(self, **options: Any) -> None:
        constructed.append(options)
        raise RuntimeError("constructor must not run")

    def greet(self) -> str:
        return "fragile"


class ExplodingSpeaker(LoudSpeaker):
    def __init__(self, volume: int = 5) -> None:
        raise RuntimeError(f"volume {volume} is too loud")


class ConfigRefusingSpeaker(LoudSpeaker):
    def __init__(self, volume: int = 5) -> None:
        raise ConfigError(f"volume {volume} is not allowed")


calls: list[dict[str, Any]] = []


def plain_factory(volume: int = 5) -> LoudSpeaker:
    calls.append({"volume": volume})
    return LoudSpeaker(volume=volume)


def executor_factory(volume: int = 5, executor: Any = None) -> LoudSpeaker:
    calls.append({"volume": volume, "executor": executor})
    return LoudSpeaker(volume=volume, executor=executor)


def kwargs_factory(**kwargs: Any) -> LoudSpeaker:
    calls.append(dict(kwargs))
    return LoudSpeaker(**kwargs)


def incomplete_factory() -> MuteSpeaker:
    return MuteSpeaker()


DUCK = DuckSpeaker()
MUTE = MuteSpeaker()


@pytest.fixture(autouse=True)
def _clear_records() -> Iterator[None]:
    calls.clear()
    constructed.clear()
    yield
    calls.clear()
    constructed.clear()


@pytest.fixture
def module_with(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install a hand-built module as ``tyl_mods.<name>`` and return its dotted name."""

    def install(name: str, **attrs: Any) -> str:
        package = types.ModuleType("tyl_mods")
        package.__path__ = []
        module = types.ModuleType(f"tyl_mods.{name}")
        for attr, value in attrs.items():
            setattr(module, attr, value)
        monkeypatch.setitem(sys.modules, "tyl_mods", package)
        monkeypatch.setitem(sys.modules, f"tyl_mods.{name}", module)
        return f"tyl_mods.{name}"

    return install


@pytest.fixture
def broken_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real package whose module ``broken`` imports a dependency that is not installed."""
    package = tmp_path / "tyl_broken_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text(
        "import tyl_missing_dependency\n\nclass Thing:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tyl_broken_pkg"
    for name in [n for n in sys.modules if n.startswith("tyl_broken_pkg")]:
        del sys.modules[name]


def third_party(monkeypatch: pytest.MonkeyPatch, group: str, **names: str) -> None:
    """Make ``entry_points(group=group)`` list ``names`` (name -> value) and nothing else."""
    points = [EntryPoint(name=name, value=value, group=group) for name, value in names.items()]

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return [ep for ep in points if ep.group == group]

    monkeypatch.setattr(loading, "entry_points", fake_entry_points)


# -- load_object ------------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"{HERE}.Widget", f"{HERE}:Widget"])
def test_class_path_is_instantiated_with_the_options(path: str) -> None:
    widget = load_object(path, size=3, colour="blue")
    assert type(widget) is Widget
    assert (widget.size, widget.colour) == (3, "blue")


def test_nested_attribute_after_the_colon_is_followed() -> None:
    assert type(load_object(f"{HERE}:Widget.Part")) is Widget.Part


@pytest.mark.parametrize("path", [f"{HERE}.make_widget", f"{HERE}:make_widget"])
def test_factory_function_is_called_with_the_options(path: str) -> None:
    widget = load_object(path, size=4)
    assert (widget.size, widget.colour) == (4, "made")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("drivers.volume.fake", fake_module),
        ("drivers.volume.fake:", fake_module),
        ("workers.core.keys.KEY_PREFIX", constants.KEY_PREFIX),
        ("workers.core.keys:KEY_PREFIX", constants.KEY_PREFIX),
        (f"{HERE}.WIDGET", WIDGET),
    ],
)
def test_module_or_plain_object_is_returned_as_it_is(path: str, expected: Any) -> None:
    assert load_object(path) is expected


@pytest.mark.parametrize("path", ["drivers.volume.fake", "workers.core.keys:KEY_PREFIX"])
def test_options_for_a_module_or_object_are_refused(path: str) -> None:
    with pytest.raises(LoadError) as info:
        load_object(path, total_gb=5)
    message = str(info.value)
    assert "driver_options ['total_gb'] were given" in message
    assert "is used as it is" in message


def test_options_that_do_not_fit_the_class_are_refused_before_calling_it() -> None:
    with pytest.raises(LoadError) as info:
        load_object(f"{HERE}:Widget", weight=3)
    message = str(info.value)
    assert "options ['weight'] do not fit" in message
    assert "Widget" in message
    assert "weight" in message


@pytest.mark.parametrize(
    ("path", "missing"),
    [
        ("tyl_no_such_pkg.mod.Name", "tyl_no_such_pkg"),
        pytest.param(
            "tyl_no_such_pkg.mod:Name", "tyl_no_such_pkg.mod"
        ),
    ],
)
def test_missing_module_error_is_caused_by_the_import_error(path: str, missing: str) -> None:
    with pytest.raises(LoadError) as info:
        load_object(path)
    assert f"no module named {missing!r}" in str(info.value)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert info.value.__cause__.name == "tyl_no_such_pkg"


@pytest.mark.parametrize("separator", [".", ":"])
def test_module_failing_on_a_missing_dependency_is_reported_as_that(
    broken_package: str, separator: str
) -> None:
    with pytest.raises(LoadError) as info:
        load_object(f"{broken_package}.broken{separator}Thing")
    message = str(info.value)
    assert f"importing module '{broken_package}.broken" in message
    assert "No module named 'tyl_missing_dependency'" in message
    assert "no module named 'tyl_broken_pkg" not in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert info.value.__cause__.name == "tyl_missing_dependency"


@pytest.mark.parametrize(
    ("path", "owner", "attribute"),
    [
        ("workers.core.keys:NOPE", "workers.core.keys", "NOPE"),
        ("workers.core.keys.NOPE", "workers.core.keys", "NOPE"),
        (f"{HERE}:Widget.nope", f"{HERE}.Widget", "nope"),
    ],
)
def test_missing_attribute_names_the_module_and_the_attribute(
    path: str, owner: str, attribute: str
) -> None:
    with pytest.raises(LoadError) as info:
        load_object(path)
    assert str(info.value) == f"{owner!r} has no attribute {attribute!r}"


@pytest.mark.parametrize("path", ["", " workers.core.keys", ".constants", ":Name"])
def test_malformed_path_is_refused(path: str) -> None:
    with pytest.raises(LoadError, match=re.escape("is not a dotted path such as pkg.module:Name")):
        load_object(path)


# -- load_driver: short names -----------------------------------------------------------


def test_installed_short_name_fake_loads_the_fake_volume_driver() -> None:
    driver = load_driver("volume", "fake", VolumeDriver, {"total_gb": 5})
    assert type(driver) is FakeVolumeDriver
    assert driver.total_gb == 5


def test_installed_short_name_file_gets_the_injected_executor(tmp_path: Path) -> None:
    executor = RecordingExecutor()
    driver = load_driver(
        "volume", "file", VolumeDriver, {"root": str(tmp_path)}, inject={"executor": executor}
    )
    assert type(driver) is FileVolumeDriver
    assert driver.root == tmp_path.resolve()
    assert driver.execute is executor


def test_unknown_short_name_lists_known_drivers() -> None:
    with pytest.raises(ConfigError) as info:
        load_driver("volume", "ceph", VolumeDriver, {})
    message = str(info.value)
    assert message.startswith(f"settings key {KEY!r} = 'ceph': ")
    assert "no short name 'ceph' in entry point group 'taskyard.drivers.volume'" in message
    assert "(known: fake, file, lvm)" in message


def test_unknown_short_name_of_a_service_without_drivers_says_none_are_installed() -> None:
    with pytest.raises(ConfigError) as info:
        load_driver("echo", "loud", Speaker, {})
    message = str(info.value)
    assert "settings key 'services.echo.driver' = 'loud'" in message
    assert "(known: none are installed)" in message


def test_third_party_driver_registered_as_an_entry_point_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    third_party(monkeypatch, "taskyard.drivers.echo", loud=f"{HERE}:LoudSpeaker")
    driver = load_driver("echo", "loud", Speaker, {"volume": 11})
    assert type(driver) is LoudSpeaker
    assert driver.volume == 11


def test_entry_point_whose_module_is_missing_keeps_the_import_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    third_party(monkeypatch, "taskyard.drivers.volume", ghost="tyl_no_such_pkg:Driver")
    with pytest.raises(ConfigError) as info:
        load_driver("volume", "ghost", VolumeDriver, {})
    message = str(info.value)
    assert message.startswith(f"settings key {KEY!r} = 'ghost': ")
    assert "entry point 'ghost' = 'tyl_no_such_pkg:Driver' failed" in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


# -- load_driver: dotted paths and the interface ----------------------------------------


@pytest.mark.parametrize(
    "value", [f"{HERE}:LoudSpeaker", f"{HERE}.DuckSpeaker", f"{HERE}:DUCK", f"{HERE}:plain_factory"]
)
def test_anything_answering_the_interface_is_accepted(value: str) -> None:
    driver = load_driver("volume", value, Speaker, {})
    assert driver.greet() in ("HELLO", "quack")


def test_module_answering_the_interface_is_used_as_the_driver(module_with: Any) -> None:
    path = module_with("complete", greet=lambda: "module", wave=lambda: None)
    driver = load_driver("volume", path, Speaker, {})
    assert driver is sys.modules[path]


def test_no_interface_means_no_check() -> None:
    assert load_driver("volume", f"{HERE}:MUTE", None, {}) is MUTE


@pytest.mark.parametrize(
    ("value", "missing"),
    [
        (f"{HERE}:MuteSpeaker", "greet, wave"),
        (f"{HERE}:HalfSpeaker", "wave"),
        (f"{HERE}:StringGreetSpeaker", "greet"),
        (f"{HERE}:MUTE", "greet, wave"),
        (f"{HERE}:incomplete_factory", "greet, wave"),
    ],
)
def test_missing_methods_are_listed_by_name(value: str, missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_driver("volume", value, Speaker, {})
    message = str(info.value)
    assert message.startswith(f"settings key {KEY!r} = {value!r}: ")
    assert f"does not implement Speaker: missing {missing}" in message
    assert message.endswith(f"missing {missing}")


def test_module_missing_methods_lists_them(module_with: Any) -> None:
    path = module_with("partial", greet=lambda: "module", wave=3)
    with pytest.raises(ConfigError) as info:
        load_driver("volume", path, Speaker, {})
    message = str(info.value)
    assert f"settings key {KEY!r} = {path!r}" in message
    assert "<module 'tyl_mods.partial'" in message
    assert message.endswith("does not implement Speaker: missing wave")


def test_interface_is_checked_before_the_constructor_runs() -> None:
    value = f"{HERE}:FragileSpeaker"
    with pytest.raises(ConfigError) as info:
        load_driver("volume", value, Speaker, {"colour": "red"})
    message = str(info.value)
    assert "does not implement Speaker: missing wave" in message
    assert "constructor must not run" not in message
    assert constructed == []


def test_constructor_failure_names_the_key_and_keeps_the_cause() -> None:
    value = f"{HERE}:ExplodingSpeaker"
    with pytest.raises(ConfigError) as info:
        load_driver("volume", value, Speaker, {"volume": 12})
    message = str(info.value)
    assert message.startswith(f"settings key {KEY!r} = {value!r}: building the driver failed")
    assert "volume 12 is too loud" in message
    assert isinstance(info.value.__cause__, RuntimeError)


# -- load_driver: injection -------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("plain_factory", {"volume": 2}),
        ("executor_factory", {"volume": 2, "executor": "EXECUTOR"}),
        ("kwargs_factory", {"volume": 2, "executor": "EXECUTOR"}),
    ],
)
def test_executor_is_injected_only_into_factories_that_accept_it(
    factory: str, expected: dict[str, Any]
) -> None:
    executor = Executor()
    load_driver("volume", f"{HERE}:{factory}", Speaker, {"volume": 2}, {"executor": executor})
    assert calls == [{k: executor if v == "EXECUTOR" else v for k, v in expected.items()}]


def test_injected_executor_reaches_a_class_that_accepts_it() -> None:
    executor = Executor()
    driver = load_driver("volume", f"{HERE}:LoudSpeaker", Speaker, {}, {"executor": executor})
    assert driver.executor is executor


def test_executor_given_in_the_options_wins_over_the_injected_one() -> None:
    driver = load_driver(
        "volume", f"{HERE}:LoudSpeaker", Speaker, {"executor": "mine"}, {"executor": Executor()}
    )
    assert driver.executor == "mine"


# -- every failure names the settings key and the value --------------------------------


@pytest.mark.parametrize(
    ("value", "options"),
    [
        ("nope", {}),
        ("tyl_no_such_pkg.drivers.Driver", {}),
        (f"{HERE}:NoSuchDriver", {}),
        (f"{HERE}:MuteSpeaker", {}),
        (f"{HERE}:LoudSpeaker", {"colour": "red"}),
        (f"{HERE}:ExplodingSpeaker", {}),
        (f"{HERE}:DUCK", {"volume": 3}),
        (f"{HERE}:incomplete_factory", {}),
        pytest.param(
            f"{HERE}:ConfigRefusingSpeaker", {}
        ),
    ],
)
def test_every_error_names_the_settings_key_and_the_value(
    value: str, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_driver("volume", value, Speaker, options)
    message = str(info.value)
    assert KEY in message
    assert repr(value) in message


# -- load_manager_class -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["volume", "managers.volume:VolumeManager"])
def test_manager_class_loads_by_short_name_or_path(value: str) -> None:
    from managers.base import Manager

    assert load_manager_class("volume", value, Manager) is VolumeManager


@pytest.mark.parametrize("value", [f"{HERE}:Widget", f"{HERE}:make_widget", f"{HERE}:WIDGET"])
def test_manager_that_is_not_a_manager_subclass_is_refused(value: str) -> None:
    from managers.base import Manager

    with pytest.raises(ConfigError) as info:
        load_manager_class("volume", value, Manager)
    message = str(info.value)
    assert message.startswith(f"settings key 'services.volume.manager' = {value!r}: ")
    assert "expected a subclass of managers.base.Manager" in message


def test_unknown_manager_short_name_lists_the_installed_managers() -> None:
    from managers.base import Manager

    with pytest.raises(ConfigError) as info:
        load_manager_class("volume", "blocks", Manager)
    message = str(info.value)
    assert "settings key 'services.volume.manager' = 'blocks'" in message
    assert "entry point group 'taskyard.managers' (known: compute, scheduler, volume)" in message
