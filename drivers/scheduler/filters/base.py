"""The contract of a placement filter.

A filter looks at one candidate host and the request, and either lets it
pass (None) or says why it cannot take the request: the reason reaches the
caller in ``NoValidHost``, per filter and per host. Filters see plain data
(:class:`~drivers.scheduler.hosts.HostState`), never Redis. Built-in filters
live one per module beside this one; a package adds its own with an entry
point in the group ``taskyard.scheduler.filters``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from drivers.scheduler.hosts import HostState, PlacementRequest


class HostFilter(ABC):
    """Removes the hosts that cannot take a request."""

    #: Request hints this filter reads (a hint no enabled filter or weigher reads is refused).
    hints: ClassVar[tuple[str, ...]] = ()

    @property
    def name(self) -> str:
        """The name settings enable it by, and ``NoValidHost`` reports it under."""
        return type(self).__name__

    @abstractmethod
    def host_passes(self, host: HostState, request: PlacementRequest) -> str | None:
        """None when ``host`` can take ``request``; otherwise why not, in a few words."""

    def filter_all(self, hosts: Sequence[HostState], request: PlacementRequest
                   ) -> tuple[list[HostState], dict[str, str]]:
        """The hosts that pass, and host -> reason for those that do not."""
        kept: list[HostState] = []
        removed: dict[str, str] = {}
        check = self.host_passes
        for host in hosts:
            reason = check(host, request)
            if reason is None:
                kept.append(host)
            else:
                removed[host.host] = reason
        return kept, removed
