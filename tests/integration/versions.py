"""Two versions of one service, for rolling-upgrade tests: 1.2 on old nodes, 1.3 on new."""

from __future__ import annotations

from managers.base import Manager, endpoint
from tests.conftest import REPO_ROOT


class GreeterV1(Manager):
    rpc_api_version = "1.2"

    @endpoint
    def greet(self, name: str) -> str:
        return f"hello {name} from {self.host} (1.2)"


class GreeterV2(Manager):
    """1.3 adds ``polite``; a 1.2 node cannot serve a request that may use it."""

    rpc_api_version = "1.3"

    @endpoint
    def greet(self, name: str, polite: bool = False) -> str:
        greeting = "good day" if polite else "hello"
        return f"{greeting} {name} from {self.host} (1.3)"


def settings_file(path: str, manager: str) -> str:
    """TASKYARD_SETTINGS: the reference fleet, plus a file adding the greeter with ``manager``."""
    with open(path, "w") as out:
        out.write(f'[default.services.greeter]\nmanager = "tests.integration.versions:{manager}"\n'
                  'driver = "os.path"\n')
    return f"{REPO_ROOT / 'settings.toml'},{path}"
