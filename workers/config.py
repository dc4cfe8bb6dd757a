"""Settings at the edge: dynaconf in, a frozen :class:`Config` of plain values out.

Sources, later ones winning: ``settings.toml`` at the project root, the
``.secrets.toml`` beside it, the files listed in ``TASKYARD_SETTINGS``
(comma-separated) and ``TASKYARD_*`` environment variables (nested keys with
``__``: ``TASKYARD_SERVICES__VOLUME__DRIVER=fake``). ``TASKYARD_ENV`` picks
the environment (``development`` unless set).

Everything is read and validated once, here; managers, drivers and the
per-message path only ever see the resulting plain values.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dynaconf import Dynaconf, ValidationError, Validator

from workers import constants, embedded
from workers.exceptions import ConfigError

#: Directory that holds ``settings.toml`` (the checkout, for an editable install).
PROJECT_ROOT = Path(__file__).resolve().parent.parent

ENVIRONMENTS = ("development", "testing", "production")
DEFAULT_ENV = "development"

#: dynaconf's own bookkeeping keys, never part of taskyard's settings.
_INTERNAL_KEYS = frozenset({"SETTINGS", "ENV", "LOAD_DOTENV", "ENV_FOR_DYNACONF", "ROOT_PATH"})

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+$")
_SECRET_WORDS = ("password", "secret", "key", "auth", "token")
MASK = "****"


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


@dataclass(frozen=True)
class FlowerConfig:
    """The ``flower`` table: where ``taskyard flower`` listens and who may look."""

    address: str = "127.0.0.1"
    port: int = 5555
    #: ``user:password`` pairs; required when ``address`` is not a loopback address.
    basic_auth: tuple[str, ...] = ()
    #: Let Flower's HTTP API answer without credentials (it refuses by default).
    unauthenticated_api: bool = False

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


@dataclass(frozen=True)
class TLSConfig:
    """The ``tls`` table: certificates for ``rediss://`` connections."""

    ca_certs: str = ""
    certfile: str = ""
    keyfile: str = ""
    cert_reqs: str = "required"

    def redis_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of redis-py (and kombu's ``*_use_ssl`` settings)."""
        import ssl

        kwargs: dict[str, Any] = {"ssl_cert_reqs": {
            "required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL,
            "none": ssl.CERT_NONE}[self.cert_reqs]}
        for name in ("ca_certs", "certfile", "keyfile"):
            if getattr(self, name):
                kwargs[f"ssl_{name}"] = getattr(self, name)
        return kwargs


@dataclass(frozen=True)
class Config:
    """The effective settings of one process, as plain values."""

    env: str
    redis_url: str
    broker_url: str
    result_backend: str
    records_url: str
    host: str
    rpc_timeout: float
    visibility_timeout: int
    result_expires: int
    root_helper: tuple[str, ...]
    state_dir: Path
    embedded_redis: bool
    report_interval: float
    service_down_time: float
    services: Mapping[str, ServiceConfig]
    #: Workers send task events, callers send task-sent events, STARTED is recorded.
    task_events: bool = True
    task_sent_events: bool = True
    task_track_started: bool = True
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    shutdown_timeout: float = 60.0
    broker_connection_timeout: float = 5.0
    max_message_bytes: int = 1024 * 1024
    security: SecurityConfig = field(default_factory=SecurityConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    #: Everything dynaconf produced (lower-case keys), for ``taskyard config``.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: Set when ``redis_url`` was redirected to a private server started by ``taskyard up``.
    embedded_url: str | None = None

    def service(self, name: str) -> ServiceConfig:
        """The named service's settings; :class:`UnknownService` when not configured."""
        try:
            return self.services[name]
        except KeyError:
            from workers.exceptions import UnknownService

            known = ", ".join(sorted(self.services)) or "none"
            raise UnknownService(
                f"unknown service {name!r}: configured services are {known} "
                f"(add a [default.services.{name}] table to settings.toml)"
            ) from None

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with some values replaced (tests and the CLI's flags)."""
        return replace(self, **changes)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_url_or_empty(value: Any) -> bool:
    return isinstance(value, str) and (value == "" or "://" in value)


def _is_redis_url(value: Any) -> bool:
    return isinstance(value, str) and urlsplit(value).scheme in ("redis", "rediss", "unix")


def _msg(expected: str) -> dict[str, str]:
    text = "settings key {name!r} = {value!r}: expected " + expected
    return {"condition": text, "operations": text, "must_exist_true": text}


VALIDATORS = [
    Validator(
        "redis_url",
        must_exist=True,
        condition=_is_redis_url,
        messages=_msg("a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0"),
    ),
    Validator(
        "broker_url", "result_backend",
        condition=_is_url_or_empty,
        messages=_msg("a URL (scheme://...) or an empty string to derive it from redis_url"),
    ),
    Validator(
        "records_url",
        condition=lambda v: v == "" or _is_redis_url(v),
        messages=_msg("a redis:// URL or an empty string to derive it from redis_url"),
    ),
    Validator(
        "host",
        condition=lambda v: isinstance(v, str) and (v == "" or bool(_HOST_RE.match(v))),
        messages=_msg("a node name of letters, digits, '.', '_' and '-' (empty: the hostname)"),
    ),
    Validator(
        "rpc_timeout", "report_interval", "service_down_time", "shutdown_timeout",
        "broker_connection_timeout",
        must_exist=True,
        condition=lambda v: _is_number(v) and v > 0,
        messages=_msg("a number of seconds greater than 0"),
    ),
    Validator(
        "max_message_bytes",
        condition=lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1024,
        messages=_msg("a whole number of bytes, at least 1024"),
    ),
    Validator(
        "security.signing_key",
        condition=lambda v: isinstance(v, str) and (v == "" or len(v) >= 16),
        messages={"condition": "settings key {name!r}: expected a key of at least 16 "
                               "characters (or empty to send messages unsigned)"},
    ),
    Validator(
        "security.previous_signing_keys",
        condition=lambda v: isinstance(v, (list, tuple)) and all(
            isinstance(k, str) and len(k) >= 16 for k in v),
        messages={"condition": "settings key {name!r}: expected a list of keys of at least "
                               "16 characters"},
    ),
    Validator(
        "tls.ca_certs", "tls.certfile", "tls.keyfile",
        condition=lambda v: isinstance(v, str) and (v == "" or Path(v).is_file()),
        messages=_msg("the path of an existing PEM file (or empty)"),
    ),
    Validator(
        "tls.cert_reqs",
        condition=lambda v: v in ("required", "optional", "none"),
        messages=_msg("required, optional or none"),
    ),
    Validator(
        "visibility_timeout", "result_expires",
        must_exist=True,
        condition=lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        messages=_msg("a whole number of seconds greater than 0"),
    ),
    Validator(
        "embedded_redis", "task_events", "task_sent_events", "task_track_started",
        "flower.unauthenticated_api",
        condition=lambda v: isinstance(v, bool),
        messages=_msg("true or false"),
    ),
    Validator(
        "flower.port",
        condition=lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536,
        messages=_msg("a TCP port number (1-65535)"),
    ),
    Validator(
        "flower.address",
        condition=lambda v: isinstance(v, str),
        messages=_msg("an address to listen on, e.g. 127.0.0.1 (empty: every interface)"),
    ),
    Validator(
        "flower.basic_auth",
        condition=lambda v: isinstance(v, (list, tuple))
        and all(isinstance(x, str) and ":" in x for x in v),
        messages=_msg('a list of "user:password" strings'),
    ),
    Validator(
        "root_helper", "state_dir",
        condition=lambda v: isinstance(v, str),
        messages=_msg("a string"),
    ),
    Validator(
        "services",
        must_exist=True,
        condition=lambda v: isinstance(v, Mapping),
        messages=_msg("a table of services: [default.services.<name>]"),
    ),
]


def settings_files(environ: Mapping[str, str] | None = None) -> list[str]:
    """The files dynaconf reads, in order; later ones win."""
    environ = os.environ if environ is None else environ
    files = [str(PROJECT_ROOT / "settings.toml"), str(PROJECT_ROOT / ".secrets.toml")]
    for path in environ.get("TASKYARD_SETTINGS", "").split(","):
        path = path.strip()
        if not path:
            continue
        if not Path(path).is_file():
            raise ConfigError(
                f"TASKYARD_SETTINGS names {path!r}, which is not a file "
                "(give comma-separated paths to existing TOML files)"
            )
        files.append(str(Path(path).resolve()))
    return files


def load_settings() -> Dynaconf:
    """Read every source (files and this process's environment) into dynaconf, validated."""
    environ = os.environ
    env = environ.get("TASKYARD_ENV", DEFAULT_ENV)
    if env not in ENVIRONMENTS:
        raise ConfigError(
            f"TASKYARD_ENV = {env!r}: expected one of {', '.join(ENVIRONMENTS)}"
        )
    settings = Dynaconf(
        envvar_prefix="TASKYARD",
        environments=True,
        env_switcher="TASKYARD_ENV",
        env=env,
        settings_files=settings_files(environ),
        root_path=str(PROJECT_ROOT),
        merge_enabled=True,
        load_dotenv=False,
        validators=VALIDATORS,
    )
    try:
        settings.validators.validate_all()
    except ValidationError as exc:
        raise ConfigError(str(exc)) from None
    return settings


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
        )
    return services


def _plain(value: Any, lower_depth: int = 0) -> Any:
    """dynaconf's Box objects as dicts and lists; keys lower-cased ``lower_depth`` levels deep.

    dynaconf keeps the case of keys from files but upper-cases keys that only
    an environment variable sets (``TASKYARD_CELERY__WORKER_CONCURRENCY``).
    Settings names are lower-case, so the structural levels are folded;
    deeper levels are data and keep their case. When a key appears in both
    cases, the upper-case one came from the environment and wins.
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        from_env: set[str] = set()
        for key, item in value.items():
            key = str(key)
            name = key.lower() if lower_depth > 0 else key
            if name in from_env:
                continue
            out[name] = _plain(item, lower_depth - 1)
            if name != key:
                from_env.add(name)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, lower_depth - 1) for v in value]
    return value


#: How many levels of each top-level table are settings names (folded to lower case).
_STRUCTURE_DEPTH = {"services": 3, "celery": 1, "broker_transport_options": 1, "flower": 1,
                    "security": 1, "tls": 1}


def build_config(settings: Dynaconf) -> Config:
    """Turn validated dynaconf settings into a :class:`Config`."""
    raw = {
        k.lower(): _plain(v, _STRUCTURE_DEPTH.get(k.lower(), 1))
        for k, v in settings.as_dict().items()
        if k not in _INTERNAL_KEYS
    }
    state_dir = Path(raw.get("state_dir") or ".taskyard")
    if not state_dir.is_absolute():
        state_dir = PROJECT_ROOT / state_dir
    redis_url = raw["redis_url"]
    embedded_url = None
    if embedded.is_local(redis_url):
        embedded_url = embedded.running_url(state_dir, redis_url)
        if embedded_url:
            redis_url = embedded_url
    report_interval = float(raw.get("report_interval", constants.DEFAULT_REPORT_INTERVAL_S))
    down_time = float(raw.get("service_down_time", constants.DEFAULT_SERVICE_DOWN_TIME_S))
    if down_time < constants.MIN_DOWN_TIME_INTERVALS * report_interval:
        raise ConfigError(
            f"settings key 'service_down_time' = {raw.get('service_down_time')!r}: expected at "
            f"least {constants.MIN_DOWN_TIME_INTERVALS} x report_interval "
            f"({constants.MIN_DOWN_TIME_INTERVALS * report_interval:g} s); a shorter time "
            "reports live nodes as down"
        )
    host = raw.get("host") or socket.gethostname()
    flower = raw.get("flower") or {}
    security = raw.get("security") or {}
    tls = raw.get("tls") or {}
    return Config(
        env=settings.current_env.lower(),
        redis_url=redis_url,
        broker_url=raw.get("broker_url") or redis_url,
        result_backend=raw.get("result_backend") or redis_url,
        records_url=raw.get("records_url") or redis_url,
        host=host,
        rpc_timeout=float(raw["rpc_timeout"]),
        visibility_timeout=int(raw["visibility_timeout"]),
        result_expires=int(raw["result_expires"]),
        root_helper=tuple(str(raw.get("root_helper") or "").split()),
        state_dir=state_dir,
        embedded_redis=bool(raw.get("embedded_redis", True)),
        report_interval=report_interval,
        service_down_time=down_time,
        services=_services(raw["services"]),
        task_events=bool(raw.get("task_events", True)),
        task_sent_events=bool(raw.get("task_sent_events", True)),
        task_track_started=bool(raw.get("task_track_started", True)),
        flower=FlowerConfig(
            address=str(flower.get("address", "127.0.0.1")),
            port=int(flower.get("port", 5555)),
            basic_auth=tuple(flower.get("basic_auth") or ()),
            unauthenticated_api=bool(flower.get("unauthenticated_api", False)),
        ),
        shutdown_timeout=float(raw.get("shutdown_timeout", 60)),
        broker_connection_timeout=float(raw.get("broker_connection_timeout", 5)),
        max_message_bytes=int(raw.get("max_message_bytes", 1024 * 1024)),
        security=SecurityConfig(
            signing_key=str(security.get("signing_key") or ""),
            previous_signing_keys=tuple(security.get("previous_signing_keys") or ()),
        ),
        tls=TLSConfig(
            ca_certs=str(tls.get("ca_certs") or ""), certfile=str(tls.get("certfile") or ""),
            keyfile=str(tls.get("keyfile") or ""),
            cert_reqs=str(tls.get("cert_reqs") or "required"),
        ),
        raw=raw,
        embedded_url=embedded_url,
    )


def load_config() -> Config:
    """Read, validate and convert the settings of this process."""
    return build_config(load_settings())


_current: Config | None = None


def get_config() -> Config:
    """The process's configuration, loaded on first use."""
    global _current
    if _current is None:
        _current = load_config()
    return _current


def set_config(config: Config | None) -> None:
    """Replace (or with None, forget) the process's configuration."""
    global _current
    _current = config


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``****``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{netloc}"))


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def masked(value: Any, key: str = "") -> Any:
    """A copy of settings safe to print: secret keys and URL passwords hidden."""
    if key and _is_secret(key) and value not in (None, "", [], {}) and not isinstance(value, bool):
        return MASK
    if isinstance(value, Mapping):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def effective(config: Config) -> dict[str, Any]:
    """The settings a node actually uses, derived URLs filled in, secrets masked."""
    data = dict(config.raw)
    data.update(
        env=config.env,
        redis_url=config.redis_url,
        broker_url=config.broker_url,
        result_backend=config.result_backend,
        records_url=config.records_url,
        host=config.host,
        state_dir=str(config.state_dir),
    )
    if config.embedded_url:
        data["embedded_redis_url"] = config.embedded_url
    return masked(dict(sorted(data.items())))
