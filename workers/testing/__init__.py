"""The testing kit: test your own services the way taskyard tests its own.

Three levels, each a few lines in a test (the pytest plugin,
:mod:`workers.testing.plugin`, registered as ``pytest11``, gives each as a
fixture):

- :func:`build_manager`: a manager with the driver you hand it and its
  records on fakeredis; call its endpoints directly.
- :class:`InProcessNode`: a node in the test's process on Celery's memory
  transport; call it with :class:`~workers.Client` through the real dispatch
  path (argument binding, errors, context, progress).
- :class:`NodeProcess` against a private :class:`RedisServer`: a real
  ``taskyard worker`` process for integration tests; against a
  :class:`SentinelRedis` (a master, replicas and three sentinels) to test a
  failover.

fakeredis is needed for the first two: ``pip install 'taskyard[testing]'``.
"""

from __future__ import annotations

from workers.cli.embedded import RedisServer
from workers.testing.kit import (
    FAKE_RECORDS_URL,
    InProcessNode,
    NodeProcess,
    RemoteFleet,
    build_manager,
    in_memory,
    node_environment,
    wait_for,
)
from workers.testing.sentinel import SentinelRedis

__all__ = [
    "FAKE_RECORDS_URL",
    "InProcessNode",
    "NodeProcess",
    "RedisServer",
    "RemoteFleet",
    "SentinelRedis",
    "build_manager",
    "in_memory",
    "node_environment",
    "wait_for",
]
