"""What every fake driver shares: failing on demand, and knowing whether it was set up.

Fakes stand in for real backends in tests and demos, so they must fail the
way a backend fails when a test asks them to (``fail=["create_volume"]``),
and they accept the options of the real driver they replace, so that one
environment variable switches a service to its fake.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar


class FakeDriver:
    """Mixin for fakes: ``fail`` names operations of ``interface`` that raise ``error``."""

    interface: ClassVar[type]
    error: ClassVar[type[Exception]]

    def init_fake(self, fail: Iterable[str], other_drivers_options: dict[str, Any]) -> None:
        self.fail = frozenset(fail)
        operations = frozenset(getattr(self.interface, "__abstractmethods__", ()))
        unknown = sorted(self.fail - operations)
        if unknown:
            raise ValueError(
                f"fail names {unknown}, which are not {self.interface.__name__} operations "
                f"({', '.join(sorted(operations))})"
            )
        self.ignored_options = sorted(other_drivers_options)
        self.setup_done = False

    def _maybe_fail(self, operation: str) -> None:
        if operation in self.fail:
            raise self.error(f"fake driver told to fail {operation}")

    def do_setup(self) -> None:
        self._maybe_fail("do_setup")
        self.setup_done = True

    def check_for_setup_error(self) -> None:
        self._maybe_fail("check_for_setup_error")
        if not self.setup_done:
            raise self.error("do_setup() has not run")
