"""Where Redis is: one server's URL, or a Sentinel list that finds the master of the moment.

A Redis URL (``redis://``, ``rediss://``, ``unix://``) names one server. A
Sentinel list names the sentinels that watch a master and elect its
successor when it fails::

    sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379/0

with the master's name in ``sentinel.master_name``. Every client (kombu's
transport, Celery's result backend, the records and the registry) asks the
sentinels where the master is, and asks again when the connection breaks, so
a promoted replica is followed without a restart.

The parts are read as kombu and Celery read them: the Redis password (and
user) is a part's ``user:password@``, the sentinels' own password is
``sentinel.password``. kombu takes the database and password from the
*first* part only; :func:`parse_sentinels` accepts them on any part and
:meth:`SentinelList.url` writes them on every part, so all three clients
agree whichever part a user wrote them on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

SENTINEL_SCHEME = "sentinel"
#: The port of a sentinel when a part names none.
DEFAULT_SENTINEL_PORT = 26379
#: URL schemes of one Redis server.
SERVER_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class SentinelConfig:
    """The ``sentinel`` table: what a Sentinel list needs besides the addresses."""

    #: The name the sentinels know the master by (``sentinel monitor <name> ...``).
    master_name: str = ""
    #: The sentinels' own password (``requirepass`` of the sentinels), not the master's.
    password: str = field(default="", repr=False)
    #: Seconds one question to a sentinel may take before the next sentinel is asked.
    socket_timeout: float = 1.0

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection arguments of the sentinels (redis-py's ``sentinel_kwargs``)."""
        kwargs: dict[str, Any] = {"socket_timeout": self.socket_timeout,
                                  "socket_connect_timeout": self.socket_timeout}
        if self.password:
            kwargs["password"] = self.password
        return kwargs

    def transport_options(self) -> dict[str, Any]:
        """kombu's and Celery's options for a ``sentinel://`` broker or result backend."""
        return {"master_name": self.master_name, "sentinel_kwargs": self.sentinel_kwargs()}


@dataclass(frozen=True)
class SentinelList:
    """A parsed Sentinel list: the sentinels, and the database and credentials of the master."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def url(self) -> str:
        """The list with the database and credentials written on every part."""
        auth = ""
        if self.password is not None or self.username:
            user = quote(self.username or "", safe="")
            auth = f"{user}:{quote(self.password or '', safe='')}@"
        return ";".join(f"{SENTINEL_SCHEME}://{auth}{_netloc(host, port)}/{self.db}"
                        for host, port in self.sentinels)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_sentinel(url: str) -> bool:
    """Whether ``url`` is a Sentinel list (``sentinel://...``, parts joined by ``;``)."""
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinels(url: str) -> SentinelList:
    """The sentinels, database and credentials of a Sentinel list.

    Raises ``ValueError`` saying which part is wrong and what a part looks like.
    """
    sentinels: list[tuple[str, int]] = []
    dbs: set[int] = set()
    username = password = None
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        try:
            parts = urlsplit(part)
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError as exc:
            raise ValueError(f"part {part!r} is not a URL ({exc})") from None
        if parts.scheme != SENTINEL_SCHEME or not parts.hostname:
            raise ValueError(f"part {part!r} is not sentinel://HOST:PORT (every part of a "
                             "Sentinel list is a sentinel's address)")
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"part {part!r} names database {path!r}: expected a number")
            dbs.add(int(path))
        if parts.password is not None and password is None:
            username, password = parts.username or None, parts.password
        sentinels.append((parts.hostname, port))
    if not sentinels:
        raise ValueError("the list names no sentinel")
    if len(dbs) > 1:
        raise ValueError(f"its parts name different databases ({sorted(dbs)}): name one, "
                         "on one part or on all")
    return SentinelList(tuple(sentinels), next(iter(dbs), 0), username, password)


def is_redis_address(value: Any) -> bool:
    """Whether ``value`` is a Redis URL or a well-formed Sentinel list."""
    if not isinstance(value, str):
        return False
    if is_sentinel(value):
        try:
            parse_sentinels(value)
        except ValueError:
            return False
        return True
    try:
        return urlsplit(value).scheme in SERVER_SCHEMES
    except ValueError:
        return False


def canonical(url: str) -> str:
    """``url`` as every client reads it alike: a Sentinel list rewritten, anything else as is."""
    return parse_sentinels(url).url() if is_sentinel(url) else url
