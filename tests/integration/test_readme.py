"""The README and the site's tutorial pages run as written: every snippet, with its outputs.

:data:`DOCUMENTS` are the pages a newcomer follows: the README, and the site's getting
started, tutorial and the guides whose snippets run against the quickstart's node. Each
fenced block of them has a language: ``python``, ``console``
(``$ command`` lines, each followed by the output it prints), ``sh``,
``toml`` or ``text``. Every ``python``, ``console`` and ``sh`` block is
preceded by a marker saying how it runs:

``<!-- readme: setup -->``
    The set-up commands. ``taskyard up`` is run as it is, as the quickstart's
    node; the install and test commands are the ones ``.ci/run`` runs.
``<!-- readme: session FLEET -->``
    Each ``$`` command, with the fleet's environment, from the repository;
    what it prints must match the lines below it (``…`` stands for anything
    within a line, a line of ``…`` alone for any number of lines).
``<!-- readme: python FLEET -->``
    The block, run by Python with the fleet's environment; it must exit 0.
``<!-- readme: commands FLEET -->``
    Each line, run in turn; each must exit 0.
``<!-- readme: background FLEET -->``
    Each line is a long-running command (a node, Flower): started, awaited
    until it serves, stopped with SIGTERM; it must exit 0.
``<!-- readme: start FLEET -->``
    Each line starts a node of the fleet, kept running for its later blocks.
``<!-- readme: ci -->``
    Commands ``.ci/run`` runs word for word.
``<!-- readme: outside -->``
    Run by ``tests/integration/test_installed.py`` in fresh virtualenvs.
``<!-- example: FILE -->``
    The examples of a service of your own (and of the testing kit), written to
    FILE and run by the tests below; a FILE shown on two pages is the same on both.

Two fleets: ``quickstart`` (the node ``taskyard up`` starts, on the private
Redis it starts itself) and ``fleet`` (the nodes of "Run a fleet", on a
private ``redis-server`` of their own). A fleet's blocks run in the order of
:data:`DOCUMENTS`, then of each page. The markers are HTML comments: the built
site does not show them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import REPO_ROOT
from workers.cli.embedded import RedisServer, free_port
from workers.core.registry import Registry
from workers.testing import node_environment, wait_for

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
#: The pages whose every snippet runs, in the order their fleets' blocks run.
DOCUMENTS = [
    README,
    DOCS / "getting-started.md",
    DOCS / "client.md",
    DOCS / "monitoring.md",
    DOCS / "reference" / "settings.md",
    DOCS / "security.md",
    DOCS / "tutorial" / "write-a-service.md",
    DOCS / "tutorial" / "test-it.md",
    DOCS / "tutorial" / "capacity.md",
    DOCS / "tutorial" / "your-own-project.md",
    DOCS / "tutorial" / "run-a-fleet.md",
]
#: Pages with example blocks of their own tests: ``tests/integration/test_tracing.py``.
RUN_ELSEWHERE = [DOCS / "tracing.md"]
LANGUAGES = {"python", "console", "sh", "toml", "text"}
RUNNABLE = {"python", "console", "sh"}
KINDS = {"setup", "session", "python", "commands", "background", "start", "ci", "outside"}
#: Seconds a node or Flower started from a page may take to serve.
START_TIMEOUT_S = 60.0

_BLOCK = re.compile(r"(?:<!-- (readme|example): ([^>]*?) -->\n)?^```([\w-]*)\n(.*?)^```$",
                    re.DOTALL | re.MULTILINE)


@dataclass
class Block:
    line: int
    language: str
    body: str
    marker: str | None = None
    kind: str | None = None
    args: list[str] = field(default_factory=list)
    path: Path = README

    @property
    def page(self) -> str:
        return str(self.path.relative_to(REPO_ROOT))

    def __str__(self) -> str:
        return f"{self.page} line {self.line} ({self.kind} {' '.join(self.args)})"


def page_blocks(path: Path) -> list[Block]:
    """The fenced blocks of one page, with their markers."""
    text = path.read_text()
    found = []
    for match in _BLOCK.finditer(text):
        marker, value, language, body = match.groups()
        line = text.count("\n", 0, match.start(3)) + 1
        block = Block(line, language, body, marker, path=path)
        if marker == "readme":
            block.kind, *block.args = value.split()
        elif marker == "example":
            block.kind, block.args = "example", [value.strip()]
        found.append(block)
    return found


def blocks() -> list[Block]:
    """The blocks of every page of :data:`DOCUMENTS`, in order."""
    return [block for path in DOCUMENTS for block in page_blocks(path)]


def examples() -> dict[str, str]:
    """FILE -> its body, for every ``example`` block of :data:`DOCUMENTS`."""
    found: dict[str, str] = {}
    for block in blocks():
        if block.kind == "example":
            name = block.args[0]
            assert found.setdefault(name, block.body) == block.body, (
                f"{block}: {name} differs from the one shown earlier")
    return found


def of(kind: str, fleet: str | None = None) -> list[Block]:
    return [b for b in blocks() if b.kind == kind and (fleet is None or b.args[:1] == [fleet])]


def lines(block: Block) -> list[str]:
    """The commands of an ``sh`` block: one per line, comments and blank lines left out."""
    found = []
    for raw in block.body.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            found.append(line)
    return found


def matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` is what ``expected`` shows (``…`` wildcards, see the module doc)."""
    pattern = []
    for line in expected.splitlines():
        if line.strip() == "…":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(re.escape(line).replace("…", r"[^\n]*") + r"[ ]*\n")
    return re.fullmatch("".join(pattern), actual.rstrip("\n") + "\n") is not None


def sessions(block: Block) -> list[tuple[str, str]]:
    """``($ command, expected output)`` pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.body.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            assert pairs, f"{block}: output before the first command"
            pairs[-1][1].append(line)
    return [(command, "\n".join(out)) for command, out in pairs]


# -- the rules --------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_block_has_a_language_and_every_snippet_a_way_to_run(path: Path) -> None:
    found = page_blocks(path)
    assert found, f"{path}: no blocks"
    for block in found:
        assert block.language in LANGUAGES, f"{block}: fence it as one of {LANGUAGES}"
        if block.language in RUNNABLE:
            assert block.kind in KINDS | {"example"}, (
                f"{block}: a {block.language} block needs a marker saying how it runs")
        if block.kind in ("session", "python", "commands", "background", "start"):
            assert block.args and block.args[0] in ("quickstart", "fleet"), str(block)
        if block.language == "console":
            assert block.body.startswith("$ "), f"{block}: a session starts with $"
        if block.kind in ("setup", "ci"):
            assert block.path == README or block.body == of(block.kind)[0].body, (
                f"{block}: the set-up commands are the README's")


def test_every_page_with_runnable_blocks_is_run() -> None:
    marked = {path for path in DOCS.rglob("*.md")
              if re.search(r"<!-- (readme|example): ", path.read_text())}
    assert marked <= set(DOCUMENTS) | set(RUN_ELSEWHERE), (
        f"add to DOCUMENTS: {sorted(map(str, marked - set(DOCUMENTS)))}")


def test_the_commands_ci_runs_are_the_readmes() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    setup = [part.strip() for line in lines(of("setup")[0]) for part in line.split("&&")]
    for command in [c for c in setup if c != "taskyard up"] + [
            line for block in of("ci") for line in lines(block)]:
        assert command in ci, f".ci/run does not run {command!r}"


# -- the fleets -------------------------------------------------------------------------


@dataclass
class Fleet:
    env: dict[str, str]
    registry: Registry
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: Path = Path()

    def run(self, command: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env={**self.env, **extra},
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    def start(self, command: str, name: str, **extra: str) -> subprocess.Popen[bytes]:
        # exec: the command itself gets the stop signal and its exit code is the process's
        # (``env`` first when the line starts by setting variables).
        runner = "exec env" if "=" in command.split()[0] else "exec"
        with (self.logs / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(["bash", "-c", f"{runner} {command}"], cwd=REPO_ROOT,
                                       env={**self.env, **extra}, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode


def fleet_environment(redis_url: str, base: Path, host: str) -> dict[str, str]:
    env = node_environment(redis_url, base / ".taskyard", TASKYARD_ENV="development",
                           TASKYARD_HOST=host, TASKYARD_FLOWER__PORT=str(free_port()))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The set-up block's ``taskyard up``, on a private Redis it starts itself."""
    base = tmp_path_factory.mktemp("quickstart")
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers: `up` starts a private Redis
    fleet = Fleet(fleet_environment(url, base, "my-laptop"),
                  Registry(redis.Redis.from_url(url), service_down_time=60), logs=base)
    (command,) = [part.strip() for line in lines(of("setup")[0])
                  for part in line.split("&&") if part.strip().startswith("taskyard up")]
    node = fleet.start(command, "up")
    try:
        wait_for(lambda: node.poll() is None and all(
            _up(fleet.registry, s, "my-laptop") for s in ("volume", "compute", "scheduler")),
            START_TIMEOUT_S, f"taskyard up to serve:\n{fleet.log('up')}", interval=0.2)
        yield fleet
    finally:
        code = fleet.stop(node)
    assert code == 0, fleet.log("up")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The nodes of "Run a fleet" (its ``start`` block), on a private redis-server."""
    base = tmp_path_factory.mktemp("fleet")
    server = RedisServer(base / "redis").start()
    env = fleet_environment(server.url, base, "operator")
    env.pop("TASKYARD_HOST")  # each node names itself with --host
    fleet = Fleet(env, Registry(redis.Redis.from_url(server.url), service_down_time=60),
                  logs=base)
    try:
        for block in of("start", "fleet"):
            for command in lines(block):
                host = command.split("--host", 1)[1].split()[0]
                node = fleet.start(command, host)
                wait_for(lambda n=node, h=host: n.poll() is None and any(
                    r.host == h and r.is_up for r in fleet.registry.list()),
                    START_TIMEOUT_S, f"{host} to serve:\n{fleet.log(host)}", interval=0.2)
        yield fleet
    finally:
        codes = [fleet.stop(node) for node in fleet.started]
        server.stop()
    assert codes == [0] * len(codes)


def _up(registry: Registry, service: str, host: str) -> bool:
    try:
        return registry.is_up(service, host)
    except redis.RedisError:  # the private Redis is not there yet
        return False


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def run_block(fleet: Fleet, block: Block) -> None:
    """Run one block in ``fleet`` as its marker says (see the module doc)."""
    if block.kind == "session":
        for command, expected in sessions(block):
            done = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=fleet.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=120, stdin=subprocess.DEVNULL)
            assert matches(expected, done.stdout), (
                f"{block}: $ {command}\nprinted:\n{done.stdout}\nthe page shows:\n{expected}")
    elif block.kind == "python":
        done = subprocess.run([sys.executable, "-c", block.body], cwd=REPO_ROOT, env=fleet.env,
                              capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{block}:\n{done.stderr[-3000:]}"
    elif block.kind == "commands":
        for command in lines(block):
            done = fleet.run(command)
            assert done.returncode == 0, f"{block}: {command}\n{done.stderr[-3000:]}"
    elif block.kind == "background":
        for index, command in enumerate(lines(block)):
            name = f"bg-{block.path.stem}-{block.line}-{index}"
            run_in_background(fleet, block, command, name)
    else:
        raise AssertionError(f"{block}: not a block to run in a fleet")


def run_in_background(fleet: Fleet, block: Block, command: str, name: str) -> None:
    """Start a long-running command, wait until it serves, stop it; it must exit 0."""
    words = shlex.split(command)
    if "pip" in words:  # an install step: it runs to its end
        done = fleet.run(command)
        assert done.returncode == 0, f"{block}: {command}\n{done.stderr[-3000:]}"
        return
    host, port = name, free_port()
    process = fleet.start(command, name, TASKYARD_HOST=host, TASKYARD_FLOWER__PORT=str(port))
    checks: list[tuple[str, Any]] = []
    if "up" in words or "worker" in words:
        checks.append(("a node to serve", lambda: any(
            r.host == host and r.is_up for r in fleet.registry.list())))
    if "flower" in words or "--flower" in words:
        checks.append(("Flower to answer", lambda: _serves(f"http://127.0.0.1:{port}/")))
    assert checks, f"{block}: {command!r} is not a command the runner knows how to await"
    try:
        for what, check in checks:
            wait_for(lambda c=check: process.poll() is None and c(), START_TIMEOUT_S,
                     f"{what} ({command}):\n{fleet.log(name)}", interval=0.2)
    finally:
        code = fleet.stop(process)
        # A node stopped this soon after it started may leave its first periodic run in its
        # own queue, for the next node of its name: a user's next node (their machine's
        # name) takes it; this one-off name never returns, so the run is dropped here, or
        # every later `taskyard status` of the pages would show it waiting.
        for queue in fleet.registry.redis.scan_iter(match=f"*.{host}*"):
            fleet.registry.redis.delete(queue)
    assert code == 0, f"{block}: {command} exited {code}:\n{fleet.log(name)}"


def test_the_quickstart_runs_as_written(quickstart: Fleet) -> None:
    ran = [b for b in blocks() if b.args[:1] == ["quickstart"]]
    assert {b.path for b in ran} >= {README, DOCS / "getting-started.md"}
    for block in ran:
        run_block(quickstart, block)


def test_run_a_fleet_runs_as_written(fleet: Fleet) -> None:
    ran = [b for b in blocks() if b.args[:1] == ["fleet"] and b.kind != "start"]
    assert ran, "the tutorial has fleet blocks"
    for block in ran:
        run_block(fleet, block)


# -- the examples -----------------------------------------------------------------------


def json_documents(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    found, index = [], 0
    while (start := text.find("{", index)) != -1:
        value, index = decoder.raw_decode(text, start)
        found.append(value)
    return found


def test_the_pages_have_the_examples() -> None:
    assert set(examples()) == {"hello_service.py", "hello.toml", "hello.sh",
                               "words_service.py", "words.toml", "words.sh", "test_words.py",
                               "buckets_service.py", "buckets.toml", "test_buckets.py"}
    readme = {b.args[0] for b in page_blocks(README) if b.kind == "example"}
    assert readme == {"hello_service.py", "hello.toml", "hello.sh"}


@pytest.mark.parametrize(("script", "printed"), [
    ("hello.sh", [{"greeting": "hello, ada", "host": "hello-node"}]),
    ("words.sh", [{"host": "words-node", "words": 3}, {"host": "py-node", "words": 2}]),
])
def test_the_service_example_runs_as_written(
    script: str, printed: list[dict[str, Any]], redis_server: RedisServer, tmp_path: Path
) -> None:
    for name, body in examples().items():
        (tmp_path / name).write_text(body)
    env = node_environment(redis_server.url, tmp_path / "state", TASKYARD_ENV="testing")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PWD"] = str(tmp_path)
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("w") as out, err_path.open("w") as err:
        # Files, not pipes: the nodes the script starts in the background keep them open.
        script = subprocess.Popen(
            ["bash", "-e", str(tmp_path / script)], cwd=tmp_path, env=env,
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        code = script.wait(timeout=100)
    finally:
        os.killpg(script.pid, signal.SIGTERM)  # the nodes the script left running
    assert code == 0, err_path.read_text()[-3000:]
    assert json_documents(out_path.read_text()) == printed


def run_example_tests(tmp_path: Path, settings: str, tests: str, passed: int) -> None:
    """Write every example file into ``tmp_path``, with ``settings`` as its settings.toml,
    and run the example test file ``tests`` there with pytest: ``passed`` tests pass."""
    for name, body in examples().items():
        (tmp_path / name).write_text(body)
    (tmp_path / "settings.toml").write_text(examples()[settings])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKYARD_", "DYNACONF_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           tests], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{passed} passed" in done.stdout, done.stdout[-2000:]


def test_the_testing_kit_example_passes_against_the_words_service(tmp_path: Path) -> None:
    run_example_tests(tmp_path, "words.toml", "test_words.py", passed=4)


def test_the_buckets_example_places_by_claims_on_real_nodes(tmp_path: Path) -> None:
    run_example_tests(tmp_path, "buckets.toml", "test_buckets.py", passed=2)
