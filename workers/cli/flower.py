"""Flower for a taskyard fleet: the project's app and settings, safe defaults.

``taskyard flower`` is a thin wrapper around Celery's ``flower`` command: it
passes the app (so Flower uses the same broker, transport options and key
names as the nodes), listens on ``flower.address``:``flower.port``
(127.0.0.1:5555 by default) and hands ``flower.basic_auth`` to Flower
through the environment rather than the command line (where ``ps`` would
show it). Listening anywhere but loopback without credentials is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from workers.core.config import Config
from workers.exceptions import ConfigError


def check_exposure(config: Config) -> None:
    """Refuse to serve Flower beyond this machine without credentials."""
    flower = config.flower
    if not flower.loopback and not flower.basic_auth:
        where = flower.address or "every interface"
        raise ConfigError(
            f"settings key 'flower.basic_auth' is empty, but Flower would listen on {where}: "
            "set it in .secrets.toml ([default.flower] basic_auth = [\"user:password\"]) or in "
            "TASKYARD_FLOWER__BASIC_AUTH, or keep flower.address on 127.0.0.1"
        )


def flower_environment(config: Config) -> dict[str, str]:
    """The FLOWER_* variables that carry the credentials and API setting to Flower."""
    env = {}
    if config.flower.basic_auth:
        env["FLOWER_BASIC_AUTH"] = ",".join(config.flower.basic_auth)
    if config.flower.unauthenticated_api:
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    return env


#: The columns of Flower's task list: the arguments of each request are shown too.
TASKS_COLUMNS = "name,uuid,state,kwargs,received,runtime,worker"


def flower_argv(config: Config) -> list[str]:
    """Celery's ``flower`` subcommand with taskyard's address, port and task columns."""
    return ["flower", f"--address={config.flower.address}", f"--port={config.flower.port}",
            f"--tasks_columns={TASKS_COLUMNS}"]


def url(config: Config) -> str:
    host = config.flower.address or "127.0.0.1"
    return f"http://{host}:{config.flower.port}/"


#: What Flower's API answers a request without credentials, in taskyard's settings' words.
UNAUTHENTICATED_API = (
    "Flower's API needs credentials: set flower.basic_auth (in .secrets.toml or "
    "TASKYARD_FLOWER__BASIC_AUTH), or flower.unauthenticated_api = true "
    "(TASKYARD_FLOWER__UNAUTHENTICATED_API=true) to let it answer without them"
)


def name_our_settings_in_refusals(handler: Any) -> None:
    """Make Flower's API refusal name taskyard's settings rather than Flower's variable.

    Wraps ``flower.api.BaseApiHandler.prepare`` (Flower 2.2; ``tests/unit/test_canaries.py``
    checks its shape), which raises a 401 naming ``FLOWER_UNAUTHENTICATED_API``.
    """
    import tornado.web  # Flower's web framework: installed with Flower, the optional extra

    original = handler.prepare
    if getattr(original, "taskyard", False):
        return

    def prepare(self: Any) -> None:
        try:
            original(self)
        except tornado.web.HTTPError as exc:
            if exc.status_code == 401:
                raise tornado.web.HTTPError(401, UNAUTHENTICATED_API) from None
            raise

    prepare.taskyard = True  # type: ignore[attr-defined]
    handler.prepare = prepare


def run_flower(app: Any, config: Config) -> int:
    """Serve Flower in this process until stopped; its exit code."""
    try:
        from flower.api import BaseApiHandler
    except ImportError:
        raise ConfigError(
            "Flower is not installed: pip install 'taskyard[flower]'"
        ) from None
    name_our_settings_in_refusals(BaseApiHandler)
    check_exposure(config)
    os.environ.update(flower_environment(config))
    from celery.bin.celery import celery as celery_command  # its plugins take a while

    celery_command.params[0].default = app
    try:
        code = celery_command.main(args=flower_argv(config), prog_name="taskyard",
                                   standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    return int(code or 0)


def start_flower_process(config: Config) -> subprocess.Popen[bytes]:
    """``taskyard flower`` as a child process (for ``taskyard up --flower``)."""
    check_exposure(config)
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "flower"], stdin=subprocess.DEVNULL,
    )
