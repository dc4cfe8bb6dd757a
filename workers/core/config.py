"""Settings at the edge: dynaconf in, a frozen :class:`Config` of plain values out.

Sources, later ones winning:

1. the framework defaults shipped in the package (``workers/core/defaults.toml``:
   every key, written once);
2. the project's settings: the files named in ``TASKYARD_SETTINGS``
   (comma-separated), or else the ``settings.toml`` of the current directory
   or of its nearest parent that has one;
3. the ``.secrets.toml`` of the project directory (the directory of the
   first settings file), when there is one;
4. ``TASKYARD_*`` environment variables (nested keys joined by ``__``:
   ``TASKYARD_SERVICES__VOLUME__DRIVER=fake``).

``TASKYARD_ENV`` picks the environment (``development`` unless set).
Reading the files is :func:`load_config`'s only I/O; :func:`build_config`
turns what was read into a :class:`Config` without touching disk or
network, and every bad value is a :class:`ConfigError` naming the key, the
value and what is expected. Managers, drivers and the per-message path
only ever see the resulting plain values.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workers.core.addresses import SentinelConfig, canonical, is_redis_address, is_sentinel
from workers.core.masking import MASK, masked
from workers.core.sources import DEFAULT_ENV, find_settings, read_settings
from workers.exceptions import ConfigError, UnknownService

#: ``service_down_time`` must be at least this many report intervals.
MIN_DOWN_TIME_INTERVALS = 2.5
#: ``visibility_timeout`` must be at least this many report intervals.
MIN_VISIBILITY_INTERVALS = 3

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class ServiceConfig:
    """One ``services.<name>`` table."""

    name: str
    manager: str
    driver: str
    driver_options: Mapping[str, Any] = field(default_factory=dict)
    #: Periodic task name -> spacing in seconds, replacing the manager's own.
    periodic: Mapping[str, float] = field(default_factory=dict)
    #: Highest API version (``major.minor``) clients send to this service; None: the
    #: version of the manager class the client has.
    version_cap: str | None = None
    #: Resource class -> ``{reserved, allocation_ratio}``, applied to the inventory the
    #: node reports for placement.
    inventory: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class FlowerConfig:
    """The ``flower`` table: where ``taskyard flower`` listens and who may look."""

    address: str
    port: int
    #: ``user:password`` pairs; required when ``address`` is not a loopback address.
    basic_auth: tuple[str, ...]
    #: Let Flower's HTTP API answer without credentials (it refuses by default).
    unauthenticated_api: bool

    @property
    def loopback(self) -> bool:
        return self.address in ("localhost", "::1") or self.address.startswith("127.")


@dataclass(frozen=True)
class SecurityConfig:
    """The ``security`` table: message signing keys (never printed)."""

    signing_key: str = field(default="", repr=False)
    previous_signing_keys: tuple[str, ...] = field(default=(), repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.signing_key)


_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL,
              "none": ssl.CERT_NONE}


@dataclass(frozen=True)
class TLSConfig:
    """The ``tls`` table: certificates for ``rediss://`` connections."""

    ca_certs: str = ""
    certfile: str = ""
    keyfile: str = ""
    cert_reqs: str = "required"

    def redis_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of redis-py (and kombu's ``*_use_ssl`` settings)."""
        kwargs: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[self.cert_reqs]}
        for name in ("ca_certs", "certfile", "keyfile"):
            if getattr(self, name):
                kwargs[f"ssl_{name}"] = getattr(self, name)
        return kwargs


@dataclass(frozen=True)
class Config:
    """The effective settings of one fleet, as plain values (defaults: ``defaults.toml``)."""

    env: str
    #: Redis URLs or Sentinel lists (see :mod:`workers.core.addresses`).
    redis_url: str
    broker_url: str
    result_backend: str
    records_url: str
    #: What a Sentinel list needs besides the addresses.
    sentinel: SentinelConfig
    #: Replicas a sent request must reach before cast/call/cast_many return (0: none).
    publish_wait_replicas: int
    #: Seconds to wait for them before :class:`Unavailable`.
    publish_wait_timeout: float
    host: str
    rpc_timeout: float
    visibility_timeout: int
    result_expires: int
    report_interval: float
    service_down_time: float
    #: Seconds a host may stay down before live nodes remove it from the registry.
    registry_forget_after: float
    shutdown_timeout: float
    broker_connection_timeout: float
    max_message_bytes: int
    root_helper: tuple[str, ...]
    state_dir: Path
    embedded_redis: bool
    #: Workers send task events, callers send task-sent events, STARTED is recorded.
    task_events: bool
    task_sent_events: bool
    task_track_started: bool
    #: Seconds a node gathers its task events before publishing them in one message.
    task_events_interval: float
    flower: FlowerConfig
    security: SecurityConfig
    tls: TLSConfig
    #: Extra Celery settings and kombu transport options, applied last.
    celery: Mapping[str, Any]
    broker_transport_options: Mapping[str, Any]
    services: Mapping[str, ServiceConfig]
    #: The directory relative paths are relative to (the project's).
    project_dir: Path
    #: The files the settings were read from, in order (the package defaults first).
    sources: tuple[str, ...] = ()
    #: Everything dynaconf produced (lower-case keys), for ``taskyard config``.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: This node's availability zone ("" : none).
    zone: str = ""

    def service(self, name: str) -> ServiceConfig:
        """The named service's settings; :class:`UnknownService` when not configured."""
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise UnknownService(
                f"unknown service {name!r}: configured services are {known} "
                f"(add a [default.services.{name}] table to the project's settings)"
            ) from None

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with some values replaced (tests and the CLI's flags)."""
        return replace(self, **changes)


def load_config(cwd: Path | None = None) -> Config:
    """Find, read and check this process's settings (its environment; ``cwd`` or its own)."""
    where = find_settings(cwd=cwd)
    env, raw = read_settings(where)
    config = build_config(raw, env=env, project_dir=where.project_dir,
                          sources=tuple(str(p) for p in where.all()))
    for name in ("ca_certs", "certfile", "keyfile"):
        path = getattr(config.tls, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"settings key 'tls.{name}' = {path!r}: expected the path of an "
                              "existing PEM file (or empty)")
    return config


# -- checking and converting ------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_redis_url(value: Any) -> bool:
    """A Redis URL, or what starts as a Sentinel list (:func:`_urls` says what is wrong in it)."""
    return isinstance(value, str) and (is_sentinel(value) or is_redis_address(value))


def _seconds(value: Any) -> bool:
    return _is_number(value) and value > 0


#: key -> (check, what is expected). Every key of ``defaults.toml`` but the tables.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "redis_url": (_is_redis_url,
                  "a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0, or a "
                  "Sentinel list sentinel://HOST:PORT;sentinel://HOST:PORT/DB"),
    "broker_url": (lambda v: isinstance(v, str) and (v == "" or "://" in v),
                   "a URL (scheme://...) or an empty string to derive it from redis_url"),
    "result_backend": (lambda v: isinstance(v, str) and (v == "" or "://" in v),
                       "a URL (scheme://...) or an empty string to derive it from redis_url"),
    "records_url": (lambda v: v == "" or _is_redis_url(v),
                    "a redis:// URL, a Sentinel list or an empty string to derive it from "
                    "redis_url"),
    "sentinel.master_name": (lambda v: isinstance(v, str),
                             "the name the sentinels know the master by (empty without "
                             "Sentinel)"),
    "sentinel.password": (lambda v: isinstance(v, str), "a string (empty: none)"),
    "sentinel.socket_timeout": (_seconds, "a number of seconds greater than 0"),
    "publish_wait_replicas": (lambda v: _is_whole(v) and v >= 0,
                              "a whole number of replicas, 0 to not wait"),
    "publish_wait_timeout": (_seconds, "a number of seconds greater than 0"),
    "host": (lambda v: isinstance(v, str) and (v == "" or bool(_HOST_RE.match(v))),
             "a node name of letters, digits, '.', '_' and '-' (empty: the hostname)"),
    "zone": (lambda v: isinstance(v, str) and (v == "" or bool(_HOST_RE.match(v))),
             "a zone name of letters, digits, '.', '_' and '-' (empty: none)"),
    "rpc_timeout": (_seconds, "a number of seconds greater than 0"),
    "report_interval": (_seconds, "a number of seconds greater than 0"),
    "service_down_time": (_seconds, "a number of seconds greater than 0"),
    "registry_forget_after": (_seconds, "a number of seconds greater than 0"),
    "shutdown_timeout": (_seconds, "a number of seconds greater than 0"),
    "broker_connection_timeout": (_seconds, "a number of seconds greater than 0"),
    "visibility_timeout": (lambda v: _is_whole(v) and v > 0,
                           "a whole number of seconds greater than 0"),
    "result_expires": (lambda v: _is_whole(v) and v > 0,
                       "a whole number of seconds greater than 0"),
    "max_message_bytes": (lambda v: _is_whole(v) and v >= 1024,
                          "a whole number of bytes, at least 1024"),
    "root_helper": (lambda v: isinstance(v, str), "a string"),
    "state_dir": (lambda v: isinstance(v, str) and v != "", "a directory path"),
    "embedded_redis": (lambda v: isinstance(v, bool), "true or false"),
    "task_events": (lambda v: isinstance(v, bool), "true or false"),
    "task_sent_events": (lambda v: isinstance(v, bool), "true or false"),
    "task_track_started": (lambda v: isinstance(v, bool), "true or false"),
    "task_events_interval": (lambda v: _is_number(v) and 0 <= v <= 10,
                             "a number of seconds from 0 (publish at once) to 10"),
    "flower.address": (lambda v: isinstance(v, str),
                       "an address to listen on, e.g. 127.0.0.1 (empty: every interface)"),
    "flower.port": (lambda v: _is_whole(v) and 0 < v < 65536, "a TCP port number (1-65535)"),
    "flower.basic_auth": (lambda v: isinstance(v, list)
                          and all(isinstance(x, str) and ":" in x for x in v),
                          'a list of "user:password" strings'),
    "flower.unauthenticated_api": (lambda v: isinstance(v, bool), "true or false"),
    "security.signing_key": (lambda v: isinstance(v, str) and (v == "" or len(v) >= 16),
                             "a key of at least 16 characters (or empty to send messages "
                             "unsigned)"),
    "security.previous_signing_keys": (lambda v: isinstance(v, list) and all(
        isinstance(k, str) and len(k) >= 16 for k in v),
        "a list of keys of at least 16 characters"),
    "tls.ca_certs": (lambda v: isinstance(v, str), "the path of a PEM file (or empty)"),
    "tls.certfile": (lambda v: isinstance(v, str), "the path of a PEM file (or empty)"),
    "tls.keyfile": (lambda v: isinstance(v, str), "the path of a PEM file (or empty)"),
    "tls.cert_reqs": (lambda v: v in _CERT_REQS, "required, optional or none"),
    "celery": (lambda v: isinstance(v, Mapping), "a table of Celery settings"),
    "broker_transport_options": (lambda v: isinstance(v, Mapping),
                                 "a table of kombu transport options"),
    "services": (lambda v: isinstance(v, Mapping),
                 "a table of services: [default.services.<name>]"),
}

#: Keys whose values are secrets: never shown, even in an error message.
_SECRET_KEYS = frozenset({"security.signing_key", "security.previous_signing_keys",
                          "sentinel.password",
                          "flower.basic_auth"})


def _get(raw: Mapping[str, Any], key: str) -> Any:
    """The checked value of ``key`` (``table.name`` for nested keys)."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(
                f"settings key {key!r} is missing: expected {_CHECKS[key][1]} (the package "
                "defaults declare every key; was it set to an empty table?)"
            )
        node = node[part]
    check, expected = _CHECKS[key]
    if not check(node):
        shown = MASK if key in _SECRET_KEYS else repr(masked(node))
        raise ConfigError(f"settings key {key!r} = {shown}: expected {expected}")
    return node


def _path(value: str, project_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_dir / path


def _services(raw: Mapping[str, Any]) -> dict[str, ServiceConfig]:
    services: dict[str, ServiceConfig] = {}
    for name, table in raw.items():
        key = f"services.{name}"
        if not _NAME_RE.match(str(name)):
            raise ConfigError(
                f"settings key {key!r}: a service name is lower-case letters, digits and '_', "
                "starting with a letter"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"settings key {key!r} = {table!r}: expected a table")
        for part in ("manager", "driver"):
            value = table.get(part)
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"settings key '{key}.{part}' = {value!r}: expected a short name or a "
                    "dotted path such as pkg.module:Name"
                )
        options = table.get("driver_options", {})
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"settings key '{key}.driver_options' = {options!r}: expected a table"
            )
        version_cap = table.get("version_cap")
        if version_cap is not None and not _VERSION_RE.match(str(version_cap)):
            raise ConfigError(
                f"settings key '{key}.version_cap' = {version_cap!r}: expected a version "
                "major.minor such as \"1.2\""
            )
        periodic = table.get("periodic", {})
        if not isinstance(periodic, Mapping) or not all(
            _is_number(v) and v > 0 for v in periodic.values()
        ):
            raise ConfigError(
                f"settings key '{key}.periodic' = {periodic!r}: expected a table of periodic "
                "task name = seconds between runs (greater than 0)"
            )
        services[name] = ServiceConfig(
            name=name,
            manager=table["manager"],
            driver=table["driver"],
            driver_options=dict(options),
            periodic={str(k): float(v) for k, v in periodic.items()},
            version_cap=str(version_cap) if version_cap is not None else None,
            inventory=_inventory(f"{key}.inventory", table.get("inventory", {})),
        )
    return services


_RESOURCE_CLASS_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


def _inventory(key: str, table: Any) -> dict[str, dict[str, float]]:
    """``services.<name>.inventory``: resource class -> ``{reserved, allocation_ratio}``."""
    expected = ("expected a table of resource class = { reserved = WHOLE UNITS >= 0, "
                "allocation_ratio = NUMBER > 0 }, e.g. { DISK_GB = { reserved = 10 } }")
    if not isinstance(table, Mapping):
        raise ConfigError(f"settings key {key!r} = {table!r}: {expected}")
    found: dict[str, dict[str, float]] = {}
    for name, entry in table.items():
        # Settings keys arrive lower-cased (dynaconf); resource classes are upper-case.
        rc = str(name).upper()
        where = f"{key}.{rc}"
        if not _RESOURCE_CLASS_RE.match(rc):
            raise ConfigError(f"settings key {where!r}: {rc!r} is not a resource class name "
                              "(letters, digits and '_', e.g. DISK_GB)")
        if isinstance(entry, Mapping):  # keys set from the environment arrive upper-case
            entry = {str(k).lower(): v for k, v in entry.items()}
        if not isinstance(entry, Mapping) or set(entry) - {"reserved", "allocation_ratio"}:
            raise ConfigError(f"settings key {where!r} = {entry!r}: {expected}")
        reserved = entry.get("reserved", 0)
        ratio = entry.get("allocation_ratio", 1.0)
        if not (_is_whole(reserved) and reserved >= 0):
            raise ConfigError(f"settings key '{where}.reserved' = {reserved!r}: expected a "
                              "whole number of units, 0 or more")
        if not (_is_number(ratio) and ratio > 0):
            raise ConfigError(f"settings key '{where}.allocation_ratio' = {ratio!r}: expected "
                              "a number greater than 0 (1.0: no over-commit)")
        found[rc] = {"reserved": int(reserved), "allocation_ratio": float(ratio)}
    return found


_URL_KEYS = ("redis_url", "broker_url", "result_backend", "records_url")


def _urls(raw: Mapping[str, Any]) -> dict[str, str]:
    """The four Redis addresses, derived ones filled in, Sentinel lists in canonical form.

    A Sentinel list needs ``sentinel.master_name``; a malformed one is
    refused with what is wrong in it.
    """
    urls: dict[str, str] = {}
    for key in _URL_KEYS:
        value = _get(raw, key) or urls.get("redis_url", "")
        if is_sentinel(value):
            try:
                value = canonical(value)
            except ValueError as exc:
                raise ConfigError(f"settings key {key!r} = {masked(value)!r} is not a Sentinel "
                                  f"list: {exc}") from None
            if not _get(raw, "sentinel.master_name"):
                raise ConfigError(
                    f"settings key 'sentinel.master_name' is empty, and {key} is a Sentinel "
                    "list: set it to the name the sentinels know the master by (sentinel "
                    "monitor NAME ...), e.g. [default.sentinel] master_name = \"mymaster\""
                )
        urls[key] = value
    return urls


def _at_least(raw: Mapping[str, Any], key: str, times: float, base: float, why: str, *,
              of: str = "report_interval") -> None:
    """:class:`ConfigError` unless ``key`` is at least ``times`` x ``base`` (the key ``of``)."""
    if float(raw[key]) < times * base:
        raise ConfigError(
            f"settings key {key!r} = {raw[key]!r}: expected at least {times:g} x "
            f"{of} ({times * base:g} s); {why}"
        )


def build_config(raw: Mapping[str, Any], *, env: str = DEFAULT_ENV,
                 project_dir: Path | None = None, sources: tuple[str, ...] = ()) -> Config:
    """Check ``raw`` (settings as read, lower-case keys) and turn it into a :class:`Config`.

    Does no I/O: relative paths are joined to ``project_dir`` (default: the
    current directory), nothing is opened or connected to.
    """
    project_dir = Path.cwd() if project_dir is None else project_dir
    get = _get
    urls = _urls(raw)
    report_interval = float(get(raw, "report_interval"))
    down_time = float(get(raw, "service_down_time"))
    _at_least(raw, "service_down_time", MIN_DOWN_TIME_INTERVALS, report_interval,
              "a shorter time reports live nodes as down")
    _at_least(raw, "registry_forget_after", 1, down_time,
              "a host must be down before it is forgotten", of="service_down_time")
    visibility_timeout = int(get(raw, "visibility_timeout"))
    _at_least(raw, "visibility_timeout", MIN_VISIBILITY_INTERVALS, report_interval,
              "nodes keep the messages they run visible at every heartbeat, and a shorter "
              "timeout would hand them out twice")
    tls_files = {name: get(raw, f"tls.{name}") for name in ("ca_certs", "certfile", "keyfile")}
    return Config(
        env=env,
        **urls,
        sentinel=SentinelConfig(
            master_name=get(raw, "sentinel.master_name"),
            password=get(raw, "sentinel.password"),
            socket_timeout=float(get(raw, "sentinel.socket_timeout")),
        ),
        publish_wait_replicas=int(get(raw, "publish_wait_replicas")),
        publish_wait_timeout=float(get(raw, "publish_wait_timeout")),
        host=get(raw, "host") or socket.gethostname(),
        zone=get(raw, "zone"),
        rpc_timeout=float(get(raw, "rpc_timeout")),
        visibility_timeout=visibility_timeout,
        result_expires=int(get(raw, "result_expires")),
        report_interval=report_interval,
        service_down_time=down_time,
        registry_forget_after=float(get(raw, "registry_forget_after")),
        shutdown_timeout=float(get(raw, "shutdown_timeout")),
        broker_connection_timeout=float(get(raw, "broker_connection_timeout")),
        max_message_bytes=int(get(raw, "max_message_bytes")),
        root_helper=tuple(get(raw, "root_helper").split()),
        state_dir=_path(get(raw, "state_dir"), project_dir),
        embedded_redis=get(raw, "embedded_redis"),
        task_events=get(raw, "task_events"),
        task_sent_events=get(raw, "task_sent_events"),
        task_track_started=get(raw, "task_track_started"),
        task_events_interval=float(get(raw, "task_events_interval")),
        flower=FlowerConfig(
            address=get(raw, "flower.address"),
            port=get(raw, "flower.port"),
            basic_auth=tuple(get(raw, "flower.basic_auth")),
            unauthenticated_api=get(raw, "flower.unauthenticated_api"),
        ),
        security=SecurityConfig(
            signing_key=get(raw, "security.signing_key"),
            previous_signing_keys=tuple(get(raw, "security.previous_signing_keys")),
        ),
        tls=TLSConfig(
            **{name: str(_path(value, project_dir)) if value else ""
               for name, value in tls_files.items()},
            cert_reqs=get(raw, "tls.cert_reqs"),
        ),
        celery=dict(get(raw, "celery")),
        broker_transport_options=dict(get(raw, "broker_transport_options")),
        services=_services(get(raw, "services")),
        project_dir=project_dir,
        sources=sources,
        raw=raw,
    )


# -- showing ------------------------------------------------------------------------------


def effective(config: Config) -> dict[str, Any]:
    """The settings a node actually uses, derived values filled in, secrets masked."""
    data = dict(config.raw)
    data.update(
        env=config.env,
        redis_url=config.redis_url,
        broker_url=config.broker_url,
        result_backend=config.result_backend,
        records_url=config.records_url,
        host=config.host,
        state_dir=str(config.state_dir),
        project_dir=str(config.project_dir),
        settings_files=list(config.sources),
    )
    data["tls"] = {**data.get("tls", {}), "ca_certs": config.tls.ca_certs,
                   "certfile": config.tls.certfile, "keyfile": config.tls.keyfile}
    return masked(dict(sorted(data.items())))
