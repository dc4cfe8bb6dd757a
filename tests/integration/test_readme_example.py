"""The README's "write your own service" example, run exactly as written there."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import node_environment
from workers.cli.embedded import RedisServer

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_examples() -> dict[str, str]:
    """Every code block of the README that follows an ``<!-- example: NAME -->`` marker."""
    pattern = re.compile(r"<!-- example: (\S+) -->\n```[a-z]*\n(.*?)```", re.DOTALL)
    return dict(pattern.findall(README.read_text()))


def json_documents(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    found, index = [], 0
    while (start := text.find("{", index)) != -1:
        value, index = decoder.raw_decode(text, start)
        found.append(value)
    return found


def test_the_readme_has_the_example() -> None:
    assert set(readme_examples()) == {"words_service.py", "words.toml", "words.sh"}


def test_the_words_service_example_runs_as_written(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    for name, body in readme_examples().items():
        (tmp_path / name).write_text(body)
    env = node_environment(redis_server.url, tmp_path / "state")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PWD"] = str(tmp_path)
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("w") as out, err_path.open("w") as err:
        # Files, not pipes: the nodes the script starts in the background keep them open.
        script = subprocess.Popen(
            ["bash", "-e", str(tmp_path / "words.sh")], cwd=tmp_path, env=env,
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        code = script.wait(timeout=100)
    finally:
        os.killpg(script.pid, signal.SIGTERM)  # the nodes the script left running
    assert code == 0, err_path.read_text()[-3000:]
    assert json_documents(out_path.read_text()) == [
        {"host": "words-node", "words": 3},
        {"host": "py-node", "words": 2},
    ]


def test_the_example_drivers_count_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    (tmp_path / "words_service.py").write_text(readme_examples()["words_service.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    import words_service  # type: ignore[import-not-found]

    from drivers.executor import RecordingExecutor
    from drivers.executor import Result as ExecResult

    text = "a quick  brown\nfox"
    assert words_service.PythonCounter().count(text) == 4
    assert words_service.WcCounter().count(text) == 4
    recorder = RecordingExecutor(responses={("wc", "-w"): ExecResult("4\n", "", 0)})
    assert words_service.WcCounter(recorder).count(text) == 4
    assert recorder.commands == [("wc", "-w")]
