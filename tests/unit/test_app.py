"""The app object: the process's default, its configuration and specs, what a caller loads."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from dataclasses import replace

import pytest
from celery import Celery

import workers
from tests.conftest import REPO_ROOT, make_app, make_config
from workers.core.application import Taskyard, default_app
from workers.exceptions import ConfigError


def test_workers_app_is_the_celery_app_of_the_process_never_a_module() -> None:
    from workers import app

    assert isinstance(app, Celery) and isinstance(app, Taskyard)
    assert workers.app is app is default_app()
    assert "workers.app" not in sys.modules
    assert app.config.services.keys() == {"volume", "compute", "scheduler"}


def test_each_app_carries_its_own_configuration_and_specs() -> None:
    fake = make_app(make_config(host="a"))
    real = make_app(make_config(env={"TASKYARD_SERVICES__VOLUME__DRIVER": "file"}, host="b"))
    assert (fake.config.host, real.config.host) == ("a", "b")
    assert fake.spec("volume").config.driver == "fake"
    assert real.spec("volume").config.driver == "file"
    assert fake.conf.broker_transport_options["taskyard_host"] == "a"


def test_a_new_app_never_sees_the_specs_of_a_freed_one() -> None:
    # A cache keyed by id(config) returned the freed config's specs when a new config
    # took its address: 500 times out of 500.
    base = make_config()
    for round_ in range(500):
        driver = ("fake", "file")[round_ % 2]
        config = base.with_overrides(services={
            "volume": replace(base.services["volume"], driver=driver)})
        app = Taskyard(config)
        assert app.spec("volume").config.driver == driver
        del app, config
        gc.collect()


def _imported_by(code: str) -> list[str]:
    """The taskyard and Celery worker modules a fresh interpreter has loaded after ``code``."""
    probe = (f"{code}\nimport sys, json\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith(("
             "'workers', 'managers', 'drivers', 'celery.worker')))))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True, timeout=60)
    return list(json.loads(done.stdout.splitlines()[-1]))


#: A caller with only a Redis: the API a node published is in (fake) Redis, the request
#: goes out on the memory transport.
CALLER = """
import json, fakeredis
from workers import Client, Taskyard, load_config
redis = fakeredis.FakeRedis()
redis.hset("taskyard:registry:volume:api", "1.0", json.dumps({
    "service": "volume", "version": "1.0", "endpoints": {"create_volume": {
        "doc": "", "arguments": {"type": "object", "properties": {"size_gb": {"type": "integer"}},
                                 "required": ["size_gb"], "additionalProperties": False}}}}))
config = load_config().with_overrides(broker_url="memory://", result_backend="cache+memory://")
client = Client("volume", app=Taskyard(config, redis_clients={config.records_url: redis}))
assert client.cast("create_volume", size_gb=1).id
try:  # a call: sent, then waited for (no node answers in this process: it times out)
    client.prepare(timeout=0.2).call("create_volume", size_gb=2)
except Timeout:
    pass
else:
    raise AssertionError("nothing should have answered")
"""


def test_a_caller_that_sends_requests_loads_no_service_code_no_node_runtime_no_cli() -> None:
    loaded = _imported_by(CALLER.replace("import Client,", "import Client, Timeout,"))
    assert "workers.client.rpc" in loaded
    assert not [m for m in loaded if m.startswith(("workers.node.", "workers.cli."))], loaded
    # No service's manager or driver, and nothing that finds, loads or runs them: the
    # caller checks requests against the API the nodes published.
    service_code = ("managers.volume", "managers.compute", "managers.scheduler",
                    "drivers.volume", "drivers.compute", "drivers.scheduler",
                    "drivers.loading", "drivers.executor", "workers.core.specs")
    assert not [m for m in loaded if m.startswith(service_code)], loaded
    assert not [m for m in loaded if m.startswith(("celery.worker.request",
                                                   "celery.worker.strategy",
                                                   "celery.worker.consumer"))], loaded


def test_importing_workers_reads_no_settings() -> None:
    # With a broken settings file, importing still works; only using the app fails.
    loaded = _imported_by("import os; os.environ['TASKYARD_RPC_TIMEOUT'] = '-1'\n"
                          "import workers, workers.exceptions\n"
                          "from workers import Client, Handle, Taskyard, default_app")
    assert "workers.core.application" in loaded and "workers.client.rpc" in loaded


def test_the_cli_and_the_registry_load_no_celery_until_a_command_needs_it() -> None:
    """``taskyard services`` and ``--help`` start without importing Celery or the client."""
    probe = ("import sys, workers, workers.client, workers.cli.main, workers.core.registry\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'celery'"
             " or m in ('workers.client.rpc', 'workers.core.application', 'kombu.connection')))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_a_service_s_spec_is_built_alone_so_a_node_needs_only_its_own_services_code() -> None:
    base = make_config()
    broken = replace(base.services["volume"], name="elsewhere",
                     manager="not_installed_here.managers:Elsewhere")
    app = Taskyard(base.with_overrides(services={**base.services, "elsewhere": broken}))
    assert app.spec("volume").manager_cls.__name__ == "VolumeManager"
    with pytest.raises(ConfigError, match="no module named 'not_installed_here"):
        app.spec("elsewhere")
