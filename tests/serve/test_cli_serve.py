"""`emote serve` as a person starts it: a process that prints the address, serves, and stops on Ctrl-C."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from support import demo_pcm16

from engine.cli import main
from engine.serve.client import stream_session
from engine.serve.hub import ServeConfig


def _interruptible() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns it into KeyboardInterrupt even
    when the test runs where SIGINT is ignored (a background `make test`, as CI may run it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_emote_serve_prints_the_address_serves_and_stops_on_ctrl_c():
    process = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--model", "tiny",
                                "--steps", "1", "--max-sessions", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=_interruptible)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("open "):
                break
        match = re.search(r"http://localhost:(\d+)/", "".join(lines))
        assert match, "".join(lines)
        port = int(match.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"live avatar" in response.read()
        pcm = demo_pcm16()[:4000]
        result = asyncio.run(stream_session(f"ws://127.0.0.1:{port}/session", pcm))
        assert result.done is not None and len(result.frames) == 7
        assert result.ready["untrained"] and result.ready["steps"] == 1 and result.ready["policy"] == "skip"
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, rest
    assert "stopped" in rest


def test_bad_serve_options_are_one_line_errors(capsys):
    assert main(["serve", "--max-sessions", "0"]) == 2
    assert main(["serve", "--port", "70000"]) == 2
    assert main(["serve", "--batch-ms", "-1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["emote: error: max_sessions must be at least 1, got 0",
                      "emote: error: port must be 0-65535, got 70000",
                      "emote: error: batch_gather_ms must be >= 0, got -1.0"]


def test_only_loopback_counts_as_local():
    assert ServeConfig(host="127.0.0.1").loopback and ServeConfig(host="::1").loopback
    assert not ServeConfig(host="0.0.0.0").loopback and not ServeConfig(host="192.0.2.7").loopback


def test_ray_serving_refuses_a_random_port_in_one_line(capsys):
    assert main(["serve", "--ray", "--model", "tiny", "--port", "0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("emote: error:") and ("ray" in error or "port" in error)


@pytest.mark.timeout(120)  # a server that starts anyway would serve until killed
def test_an_exposed_server_without_a_token_does_not_start(capsys, monkeypatch):
    monkeypatch.delenv("EMOTE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without a token" in err[0] and "--open-server" in err[0], err
    assert ServeConfig(host="0.0.0.0", open_server=True).exposure_error() is None
    assert ServeConfig(host="0.0.0.0", token="t").exposure_error() is None
    assert ServeConfig(host="127.0.0.1").exposure_error() is None


def test_the_token_comes_from_a_flag_a_file_or_the_environment(tmp_path, monkeypatch, capsys):
    from engine.cli import _serve_token, build_parser

    parser = build_parser()
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("EMOTE_TOKEN", "from-env")
    assert _serve_token(parser.parse_args(["serve", "--token", "from-flag"])) == "from-flag"
    assert _serve_token(parser.parse_args(["serve", "--token-file", str(tmp_path / "token")])) == "from-file"
    assert _serve_token(parser.parse_args(["serve"])) == "from-env"
    for bad in ("empty", "missing"):
        with pytest.raises(ValueError, match="--token-file"):
            _serve_token(parser.parse_args(["serve", "--token-file", str(tmp_path / bad)]))
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--token", "a", "--token-file", str(tmp_path / "token")])
