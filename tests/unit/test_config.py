"""workers/core/config.py: sources, environments, validation, derived values and masking."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, make_config
from workers.core import config as config_mod
from workers.core.config import build_config, effective, load_config
from workers.core.masking import MASK, masked
from workers.core.sources import DEFAULTS_FILE
from workers.exceptions import ConfigError, InvalidRequest, UnknownService


def _all_keys(value: Any) -> Iterator[str]:
    """Every key of every mapping nested in ``value``."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _all_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _all_keys(item)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- environment overrides ------------------------------------------------------------


def test_nested_environment_variable_overrides_the_service_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKYARD_ENV", "development")
    assert make_config().services["volume"].driver == "file"

    monkeypatch.setenv("TASKYARD_SERVICES__VOLUME__DRIVER", "fake")
    config = make_config()

    assert config.services["volume"].driver == "fake"
    assert list(config.services) == ["volume", "compute", "scheduler"]
    assert config.raw["services"]["volume"] == {
        "manager": "volume",
        "driver": "fake",
        "driver_options": {"root": "{state_dir}/volumes/{host}"},
    }
    assert [key for key in _all_keys(config.raw) if key != key.lower()] == []


@pytest.mark.parametrize(
    ("variable", "path", "expected"),
    [
        pytest.param(
            "TASKYARD_SERVICES__VOLUME__DRIVER_OPTIONS__TOTAL_GB", ("services", "volume",
            "driver_options"), {"root": "{state_dir}/volumes/{host}", "total_gb": 5},
            id="new-driver-option",
        ),
        pytest.param(
            "TASKYARD_CELERY__WORKER_MAX_TASKS_PER_CHILD", ("celery",),
            {"worker_max_tasks_per_child": 5},
            id="new-celery-setting",
        ),
    ],
)
def test_new_nested_keys_from_the_environment_are_lower_case(
    monkeypatch: pytest.MonkeyPatch, variable: str, path: tuple[str, ...], expected: dict
) -> None:
    monkeypatch.setenv(variable, "5")
    node: Any = make_config().raw
    for part in path:
        node = node[part]
    assert node == expected


def test_scalar_override_is_parsed_as_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKYARD_RPC_TIMEOUT", "5")
    monkeypatch.setenv("TASKYARD_EMBEDDED_REDIS", "false")
    monkeypatch.setenv("TASKYARD_HOST", "node-7")

    config = make_config()

    assert config.rpc_timeout == 5.0
    assert isinstance(config.rpc_timeout, float)
    assert config.raw["rpc_timeout"] == 5
    assert config.embedded_redis is False
    assert config.host == "node-7"


def test_overrides_in_the_environ_passed_to_load_config_are_applied() -> None:
    config = make_config(env={"TASKYARD_RPC_TIMEOUT": "5"})
    assert config.rpc_timeout == 5.0


# -- environments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "driver", "rpc_timeout"),
    [("testing", "fake", 30.0), ("development", "file", 30.0), ("production", "file", 60.0)],
)
def test_taskyard_env_picks_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: str, driver: str, rpc_timeout: float
) -> None:
    monkeypatch.setenv("TASKYARD_ENV", env)
    config = make_config()
    assert config.env == env
    assert config.services["volume"].driver == driver
    assert config.rpc_timeout == rpc_timeout


def test_environment_is_development_when_taskyard_env_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASKYARD_ENV")
    config = make_config()
    assert config.env == "development"
    assert config.services["volume"].driver == "file"


def test_unknown_environment_is_a_config_error_naming_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKYARD_ENV", "staging")
    with pytest.raises(ConfigError) as info:
        make_config()
    message = str(info.value)
    assert "TASKYARD_ENV" in message
    assert "'staging'" in message
    assert "development, testing, production" in message


# -- extra settings files -------------------------------------------------------------


def test_settings_files_named_in_taskyard_settings_merge_in_order(tmp_path: Path) -> None:
    echo = _write(
        tmp_path / "echo.toml",
        '[default.services.echo]\nmanager = "pkg.echo:EchoManager"\ndriver = "pkg.echo:Driver"\n'
        "[default]\nrpc_timeout = 7\n",
    )
    later = _write(tmp_path / "later.toml", "[default]\nrpc_timeout = 9\n")
    project = REPO_ROOT / "settings.toml"

    config = make_config(env={"TASKYARD_SETTINGS": f"{project}, {echo}, {later}"})

    assert sorted(config.services) == ["compute", "echo", "scheduler", "volume"]
    assert config.services["echo"].manager == "pkg.echo:EchoManager"
    assert config.services["echo"].driver_options == {}
    assert config.services["volume"].driver == "fake"
    assert config.rpc_timeout == 9.0
    assert config.sources == (str(DEFAULTS_FILE), str(project), str(echo), str(later))


def test_taskyard_settings_replaces_the_search_for_a_settings_toml(tmp_path: Path) -> None:
    echo = _write(tmp_path / "echo.toml",
                  '[default.services.echo]\nmanager = "a:B"\ndriver = "c:D"\n')
    config = make_config(env={"TASKYARD_SETTINGS": str(echo)})
    assert list(config.services) == ["echo"]
    assert config.project_dir == tmp_path


def test_extra_settings_file_from_the_process_environment_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    extra = _write(tmp_path / "site.toml", "[testing]\nreport_interval = 2\n")
    monkeypatch.setenv("TASKYARD_SETTINGS", str(extra))

    config = make_config()

    assert config.report_interval == 2.0
    assert "settings" not in config.raw


def test_missing_extra_settings_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        make_config(env={"TASKYARD_SETTINGS": str(missing)})
    message = str(info.value)
    assert "TASKYARD_SETTINGS" in message
    assert repr(str(missing)) in message
    assert "not a file" in message


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "key", "shown", "expected"),
    [
        ("TASKYARD_RPC_TIMEOUT", "-1", "rpc_timeout", "-1", "a number of seconds greater than 0"),
        ("TASKYARD_REPORT_INTERVAL", "0", "report_interval", "0", "greater than 0"),
        ("TASKYARD_REDIS_URL", "http://x", "redis_url", "'http://x'",
         "a redis://, rediss:// or unix:// URL"),
        ("TASKYARD_RECORDS_URL", "memory://", "records_url", "'memory://'", "a redis:// URL"),
        ("TASKYARD_BROKER_URL", "localhost", "broker_url", "'localhost'", "a URL (scheme://...)"),
        ("TASKYARD_VISIBILITY_TIMEOUT", "1.5", "visibility_timeout", "1.5",
         "a whole number of seconds greater than 0"),
        ("TASKYARD_HOST", "a b", "host", "'a b'", "a node name of letters, digits"),
        ("TASKYARD_EMBEDDED_REDIS", "1", "embedded_redis", "1", "true or false"),
        ("TASKYARD_TASK_EVENTS_INTERVAL", "60", "task_events_interval", "60",
         "a number of seconds from 0 (publish at once) to 10"),
    ],
)
def test_invalid_value_names_the_key_the_value_and_what_is_expected(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, key: str, shown: str, expected: str
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigError) as info:
        make_config()
    message = str(info.value)
    assert f"settings key '{key}' = {shown}: expected " in message
    assert expected in message


@pytest.mark.parametrize(
    ("interval", "down_time", "minimum"), [("10", "20", "25"), ("4", "9.5", "10")]
)
def test_service_down_time_below_two_and_a_half_report_intervals_is_refused(
    monkeypatch: pytest.MonkeyPatch, interval: str, down_time: str, minimum: str
) -> None:
    monkeypatch.setenv("TASKYARD_REPORT_INTERVAL", interval)
    monkeypatch.setenv("TASKYARD_SERVICE_DOWN_TIME", down_time)
    with pytest.raises(ConfigError) as info:
        make_config()
    message = str(info.value)
    assert f"settings key 'service_down_time' = {down_time}: expected at least 2.5 x " in message
    assert f"report_interval ({minimum} s)" in message


def test_service_down_time_of_exactly_two_and_a_half_intervals_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKYARD_REPORT_INTERVAL", "4")
    monkeypatch.setenv("TASKYARD_SERVICE_DOWN_TIME", "10")
    config = make_config()
    assert (config.report_interval, config.service_down_time) == (4.0, 10.0)


# -- derived values -------------------------------------------------------------------


def test_broker_results_and_records_derive_from_redis_url_when_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKYARD_REDIS_URL", "redis://cache.example:6380/3")
    config = make_config()
    assert config.redis_url == "redis://cache.example:6380/3"
    assert config.broker_url == "redis://cache.example:6380/3"
    assert config.result_backend == "redis://cache.example:6380/3"
    assert config.records_url == "redis://cache.example:6380/3"


@pytest.mark.parametrize("key", ["broker_url", "result_backend", "records_url"])
def test_each_derived_url_can_be_overridden_on_its_own(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("TASKYARD_REDIS_URL", "redis://main.example:6379/0")
    monkeypatch.setenv(f"TASKYARD_{key.upper()}", "redis://other.example:6379/5")

    config = make_config()

    urls = {k: getattr(config, k) for k in ("broker_url", "result_backend", "records_url")}
    assert urls.pop(key) == "redis://other.example:6379/5"
    assert urls == dict.fromkeys(urls, "redis://main.example:6379/0")


def test_host_defaults_to_the_machines_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod.socket, "gethostname", lambda: "box-42")
    assert make_config().host == "box-42"

    monkeypatch.setenv("TASKYARD_HOST", "node-b")
    assert make_config().host == "node-b"


def test_root_helper_is_split_into_words(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_config().root_helper == ()
    monkeypatch.setenv("TASKYARD_ROOT_HELPER", "sudo -n")
    assert make_config().root_helper == ("sudo", "-n")


# -- masking --------------------------------------------------------------------------


def test_effective_settings_hide_the_password_of_every_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKYARD_REDIS_URL", "redis://:s3cret@h:6379/0")
    config = make_config()

    shown = effective(config)

    assert "s3cret" not in json.dumps(shown)
    assert "s3cret" not in repr(shown)
    assert shown["redis_url"] == f"redis://:{MASK}@h:6379/0"
    for key in ("broker_url", "result_backend", "records_url"):
        assert shown[key] == f"redis://:{MASK}@h:6379/0"
    assert config.redis_url == "redis://:s3cret@h:6379/0"  # only the printed copy is masked


def test_effective_settings_fill_in_derived_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKYARD_HOST", "node-c")
    config = make_config()
    shown = effective(config)
    assert shown["env"] == "testing"
    assert shown["host"] == "node-c"
    assert shown["broker_url"] == config.redis_url
    assert shown["state_dir"] == str(config.state_dir)
    assert list(shown) == sorted(shown)


def test_effective_settings_mask_secret_keys_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKYARD_API_KEY", "k-123")
    monkeypatch.setenv("TASKYARD_BROKER_TRANSPORT_OPTIONS__PASSWORD", "pw-456")
    shown = json.dumps(effective(make_config()))
    assert "k-123" not in shown
    assert "pw-456" not in shown


def test_masked_hides_values_of_keys_naming_password_secret_key_auth_or_token() -> None:
    settings = {
        "password": "p1",
        "DB_PASSWORD": "p2",
        "client_secret": "p3",
        "signing_key": "p4",
        "tokens": ["t1"],
        "keys": ["p5"],
        "basic_auth": ["user:pw"],
        "unauthenticated_api": False,
        "nested": {"redis_password": "p6", "plain": "visible"},
        "empty_secret": "",
        "no_password": None,
        "url": "redis://user:p7@host:6379/0",
        "plain_url": "redis://host:6379/0",
        "count": 3,
    }

    shown = masked(settings)

    assert shown == {
        "password": MASK,
        "DB_PASSWORD": MASK,
        "client_secret": MASK,
        "signing_key": MASK,
        "tokens": MASK,
        "keys": MASK,
        "basic_auth": MASK,
        "unauthenticated_api": False,
        "nested": {"redis_password": MASK, "plain": "visible"},
        "empty_secret": "",
        "no_password": None,
        "url": f"redis://user:{MASK}@host:6379/0",
        "plain_url": "redis://host:6379/0",
        "count": 3,
    }
    assert settings["password"] == "p1"  # a copy, the input is untouched


def test_masked_hides_a_whole_table_under_a_secret_key() -> None:
    shown = masked({"secrets": {"token": "t-789"}})
    assert "t-789" not in json.dumps(shown)


# -- services -------------------------------------------------------------------------


def test_service_returns_the_configured_service() -> None:
    volume = make_config().service("volume")
    assert volume.name == "volume"
    assert volume.manager == "volume"
    assert volume.driver == "fake"


def test_unknown_service_lists_the_configured_services(tmp_path: Path) -> None:
    extra = _write(
        tmp_path / "echo.toml",
        '[default.services.echo]\nmanager = "pkg.echo:M"\ndriver = "pkg.echo:D"\n',
    )
    config = make_config(env={"TASKYARD_SETTINGS": f"{REPO_ROOT / 'settings.toml'},{extra}"})

    with pytest.raises(UnknownService) as info:
        config.service("nope")

    assert isinstance(info.value, InvalidRequest)
    message = str(info.value)
    assert "unknown service 'nope'" in message
    assert "configured services are compute, echo, scheduler, volume" in message
    assert "[default.services.nope]" in message


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[default.services.2echo]\nmanager = "a:b"\ndriver = "c"\n',
         "settings key 'services.2echo': a service name is lower-case"),
        ('[default.services.echo]\nmanager = "a:b"\n',
         "settings key 'services.echo.driver' = None: expected a short name or a dotted path"),
        ('[default.services.echo]\nmanager = "a:b"\ndriver = "c"\ndriver_options = 3\n',
         "settings key 'services.echo.driver_options' = 3: expected a table"),
        ('[default.services.echo]\nmanager = "a:b"\ndriver = "c"\n'
         '[default.services.echo.inventory]\ndisk-gb = { reserved = 1 }\n',
         "settings key 'services.echo.inventory.DISK-GB': 'DISK-GB' is not a resource class"),
        ('[default.services.echo]\nmanager = "a:b"\ndriver = "c"\n'
         '[default.services.echo.inventory]\nDISK_GB = { reserved = -1 }\n',
         "settings key 'services.echo.inventory.DISK_GB.reserved' = -1: expected a whole"),
        ('[default.services.echo]\nmanager = "a:b"\ndriver = "c"\n'
         '[default.services.echo.inventory]\nDISK_GB = { allocation_ratio = 0 }\n',
         "settings key 'services.echo.inventory.DISK_GB.allocation_ratio' = 0: expected a "
         "number greater than 0"),
        ('[default.services.echo]\nmanager = "a:b"\ndriver = "c"\n'
         '[default.services.echo.inventory]\nDISK_GB = { spare = 1 }\n',
         "settings key 'services.echo.inventory.DISK_GB' = {'spare': 1}: expected a table of "
         "resource class"),
    ],
)
def test_malformed_service_table_is_a_config_error_naming_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    extra = _write(tmp_path / "bad.toml", table)
    with pytest.raises(ConfigError) as info:
        make_config(env={"TASKYARD_SETTINGS": str(extra)})
    assert message in str(info.value)


# -- where the settings come from -------------------------------------------------------


def _project(root: Path, text: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "settings.toml", text)
    return root


def test_the_package_defaults_declare_every_key_and_no_service(tmp_path: Path) -> None:
    config = load_config(cwd=tmp_path)  # no settings.toml here or above
    assert config.services == {}
    assert config.sources == (str(DEFAULTS_FILE),)
    assert config.project_dir == tmp_path
    assert (config.rpc_timeout, config.visibility_timeout) == (30.0, 3600)


def test_the_nearest_settings_toml_above_the_current_directory_is_the_project(
    tmp_path: Path,
) -> None:
    project = _project(tmp_path / "proj", "[default]\nrpc_timeout = 12\n")
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    config = load_config(cwd=deep)
    assert config.rpc_timeout == 12.0
    assert config.project_dir == project
    assert config.sources == (str(DEFAULTS_FILE), str(project / "settings.toml"))


def test_secrets_beside_the_project_settings_are_read_last(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj", '[default.security]\nsigning_key = ""\n')
    _write(project / ".secrets.toml", '[default.security]\nsigning_key = "0123456789abcdef"\n')
    config = load_config(cwd=project)
    assert config.security.signing_key == "0123456789abcdef"
    assert config.sources[-1] == str(project / ".secrets.toml")
    assert "0123456789abcdef" not in json.dumps(effective(config))


def test_a_relative_state_dir_is_relative_to_the_project_not_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASKYARD_STATE_DIR")
    project = _project(tmp_path / "proj", '[default]\nstate_dir = "var/state"\n')
    (project / "sub").mkdir()
    config = load_config(cwd=project / "sub")
    assert config.state_dir == project / "var" / "state"


def test_config_shows_which_files_it_read_and_every_path_resolved(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj")
    shown = effective(load_config(cwd=project))
    assert shown["settings_files"] == [str(DEFAULTS_FILE), str(project / "settings.toml")]
    assert shown["project_dir"] == str(project)
    assert Path(shown["state_dir"]).is_absolute()


def test_a_table_replaced_by_a_value_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj", "[default]\nflower = 3\n")
    with pytest.raises(ConfigError, match=r"settings key 'flower\.address' is missing"):
        load_config(cwd=project)


def test_a_toml_syntax_error_is_a_config_error_naming_the_problem(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj", "[default\nrpc_timeout = \n")
    with pytest.raises(ConfigError, match="cannot read the settings"):
        load_config(cwd=project)


def test_a_secret_with_a_bad_value_is_named_but_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKYARD_SECURITY__SIGNING_KEY", "short-secret")
    with pytest.raises(ConfigError) as info:
        make_config()
    assert "'security.signing_key' = ****" in str(info.value)
    assert "short-secret" not in str(info.value)


def test_building_a_config_touches_no_file(tmp_path: Path) -> None:
    raw = make_config().raw
    config = build_config(raw, project_dir=tmp_path / "nowhere")
    assert config.state_dir.is_absolute()
    assert not (tmp_path / "nowhere").exists()


def test_a_nodes_zone_and_a_services_inventory_tuning_are_read_and_checked(
    tmp_path: Path,
) -> None:
    extra = _write(tmp_path / "zone.toml", '''[default]
zone = "az-1"
[default.services.volume.inventory]
DISK_GB = { reserved = 10, allocation_ratio = 1.5 }
''')
    config = make_config(env={"TASKYARD_SETTINGS": f"{REPO_ROOT / 'settings.toml'},{extra}"})
    assert config.zone == "az-1"
    assert config.services["volume"].inventory == {
        "DISK_GB": {"reserved": 10, "allocation_ratio": 1.5}}
    assert make_config().zone == ""
    from_env = make_config(env={"TASKYARD_SERVICES__VOLUME__INVENTORY__DISK_GB__RESERVED": "4"})
    assert from_env.services["volume"].inventory == {
        "DISK_GB": {"reserved": 4, "allocation_ratio": 1.0}}
    with pytest.raises(ConfigError, match="settings key 'zone' = 'a zone': expected a zone name"):
        make_config(env={"TASKYARD_ZONE": "a zone"})
