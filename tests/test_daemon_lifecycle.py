"""Daemon lifecycle on real processes: discovery, status/stop, connect() starting a daemon (two clients at once,
load progress), hot reload, config show, logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningDaemon, TinyModels, start_daemon, stop_daemon
from waiting import wait_until

from localspec.config import update_config_file


def _cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")} | {
        "LOCALSPEC_HOME": str(home)
    }
    return subprocess.run(
        [sys.executable, "-m", "localspec", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_discovery_file_points_at_the_daemon_and_goes_away_on_stop(daemon: RunningDaemon) -> None:
    info = json.loads((daemon.home / "state" / "daemon.json").read_text())
    assert info["pid"] == daemon.process.pid
    assert info["url"] == daemon.url == f"http://127.0.0.1:{info['port']}"
    assert info["port"] > 0 and info["host"] == "127.0.0.1" and info["started_at"] <= time.time()

    status = _cli(daemon.home, "status")
    assert status.returncode == 0, status.stderr
    assert daemon.url in status.stdout and "tiny-target" in status.stdout and "status: ok" in status.stdout
    assert "prompt cache: 0 copies, 0.0 of " in status.stdout  # what it holds, of its budget
    as_json = json.loads(_cli(daemon.home, "status", "--json").stdout)
    assert as_json["health"]["models"] == {"target": "tiny-target", "draft": "tiny-draft-similar"}

    stop = _cli(daemon.home, "stop")
    assert stop.returncode == 0 and str(daemon.process.pid) in stop.stdout
    assert daemon.process.wait(timeout=10) == 0
    assert not (daemon.home / "state" / "daemon.json").exists()
    assert _cli(daemon.home, "status").returncode == 3
    log = (daemon.home / "log" / "daemon.log").read_text()
    assert "serving on" in log and "prompt cache: up to" in log


def test_second_daemon_in_the_same_home_refuses_to_start(
    daemon: RunningDaemon, tiny_models: TinyModels
) -> None:
    second = _cli(daemon.home, "serve", "--port", "0", "--target", str(tiny_models.target))
    assert second.returncode == 1
    assert "already running" in second.stderr and "localspec stop" in second.stderr


def test_config_show_explains_where_values_come_from(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text("[engine]\nn_ctx = 1024\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    result = subprocess.run(
        [sys.executable, "-m", "localspec", "config", "show", "--json"],
        env=env | {"LOCALSPEC_HOME": str(home), "LOCALSPEC_SERVER_PORT": "9999"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = json.loads(result.stdout)
    assert rows["engine.n_ctx"]["value"] == 1024 and "config file" in rows["engine.n_ctx"]["source"]
    assert rows["server.port"] == {"value": 9999, "source": "env LOCALSPEC_SERVER_PORT"}
    assert rows["server.host"] == {"value": "127.0.0.1", "source": "default"}


_ENSURE = """
import json, sys
from localspec.client import connect
messages = []
client = connect(progress=messages.append, timeout=90, serve_args=sys.argv[1:])
health = client.health()
print(json.dumps({"url": client.url, "status": health["status"], "messages": messages}))
"""


def test_two_clients_starting_at_once_make_one_daemon(tiny_models: TinyModels, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")} | {
        "LOCALSPEC_HOME": str(home)
    }
    serve_args = ["--port", "0", "--threads", "1", "--target", str(tiny_models.target)]
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", _ENSURE, *serve_args], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        results = [json.loads(c.communicate(timeout=120)[0]) for c in clients]
        assert [c.returncode for c in clients] == [0, 0]
        assert results[0]["url"] == results[1]["url"]
        assert {r["status"] for r in results} == {"ok"}
        starters = [r for r in results if "starting the localspec daemon" in r["messages"]]
        assert len(starters) == 1, results
        log = (home / "log" / "serve-autostart.log").read_text()
        assert log.count("serving on") == 1, log
    finally:
        info = json.loads((home / "state" / "daemon.json").read_text())
        os.kill(info["pid"], 15)
        deadline = time.monotonic() + 15
        while (home / "state" / "daemon.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def test_connect_without_autostart_reports_no_daemon(localspec_home: Path) -> None:
    from localspec.client import connect
    from localspec.errors import DaemonUnavailableError

    with pytest.raises(DaemonUnavailableError, match="localspec serve"):
        connect(autostart=False)


def test_connect_starts_the_daemon_and_reports_its_models_loading(
    tiny_models: TinyModels, localspec_home: Path
) -> None:
    from localspec.client import connect, stop_daemon

    messages: list[str] = []
    serve_args = ["--port", "0", "--threads", "1", "--target", str(tiny_models.target), "--no-watch"]
    try:
        # A fresh home runs llama.cpp's canary in a child process before the load, so "loading" lasts a while.
        with connect(progress=messages.append, timeout=90, serve_args=serve_args) as client:
            assert client.health()["status"] == "ok"
        assert messages == ["starting the localspec daemon", "loading target.gguf"]
    finally:
        stop_daemon()


async def test_aconnect_reports_progress_on_the_event_loop_and_reuses_a_ready_daemon(
    tiny_models: TinyModels, localspec_home: Path
) -> None:
    import threading

    from localspec.client import aconnect, stop_daemon

    loop_thread = threading.get_ident()
    threads: set[int] = set()
    messages: list[str] = []

    def progress(message: str) -> None:
        threads.add(threading.get_ident())
        messages.append(message)

    serve_args = ["--port", "0", "--threads", "1", "--target", str(tiny_models.target), "--no-watch"]
    try:
        async with await aconnect(progress=progress, timeout=90, serve_args=serve_args) as client:
            assert (await client.health())["status"] == "ok"
        assert messages[0] == "starting the localspec daemon" and threads == {loop_thread}
        messages.clear()
        async with await aconnect(progress=progress, timeout=0) as again:  # ready: no start, no waiting
            assert again.url == client.url
        assert messages == []
    finally:
        stop_daemon()


def test_connect_without_waiting_says_why_the_models_did_not_load(
    localspec_home: Path, tmp_path: Path
) -> None:
    from localspec.client import connect
    from localspec.errors import DaemonUnavailableError

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really a model")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")} | {
        "LOCALSPEC_HOME": str(localspec_home)
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "localspec", "serve", "--port", "0", "--target", str(broken), "--no-watch"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        discovery = localspec_home / "state" / "daemon.json"
        wait_until(discovery.exists)
        url = json.loads(discovery.read_text())["url"]
        wait_until(lambda: httpx.get(f"{url}/health", timeout=5).json()["status"] == "error")
        with pytest.raises(DaemonUnavailableError, match=r"could not load its models: .*broken\.gguf"):
            connect(autostart=False, timeout=0)
    finally:
        stop_daemon(process)


def _health(daemon: RunningDaemon) -> dict[str, Any]:
    return httpx.get(f"{daemon.url}/health", timeout=10).json()


def test_hot_reload_swaps_a_good_model_and_keeps_serving_after_a_corrupt_one(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    config_file = home / "config" / "config.toml"
    config_file.parent.mkdir(parents=True)
    update_config_file(
        {"target": str(tiny_models.target), "draft": str(tiny_models.draft_similar)}, config_file
    )
    running = start_daemon(home, ["--threads", "1"])
    try:
        assert _health(running)["models"] == {"target": "tiny-target", "draft": "tiny-draft-similar"}

        # A good change: another target, no draft. It loads in the background and swaps in.
        update_config_file({"target": str(tiny_models.no_fim), "draft": "none"}, config_file)
        wait_until(lambda: _health(running)["models"]["target"] == "tiny-no-fim")
        assert _health(running)["models"]["draft"] is None
        models = httpx.get(f"{running.url}/v1/models", headers=running.headers, timeout=10).json()
        assert models["data"][0]["id"] == "tiny-no-fim"

        # A corrupt file: the load fails, the error shows in /health and the log, the old model keeps serving.
        corrupt = tmp_path / "corrupt.gguf"
        corrupt.write_bytes(b"GGUF" + os.urandom(4096))
        update_config_file({"target": str(corrupt)}, config_file)
        wait_until(lambda: bool(_health(running)["errors"]))
        health = _health(running)
        assert health["status"] == "ok"
        assert health["models"]["target"] == "tiny-no-fim"
        assert "corrupt.gguf" in health["errors"][0]["message"]
        assert "keep serving" in health["errors"][0]["message"]
        completion = httpx.post(
            f"{running.url}/v1/completions",
            json={"prompt": "hi", "max_tokens": 4},
            headers=running.headers,
            timeout=30,
        )
        assert completion.status_code == 200 and completion.json()["model"] == "tiny-no-fim"
        assert "corrupt.gguf" in (home / "log" / "daemon.log").read_text()

        # A typo in the file: refused by name, and the daemon keeps the settings it runs with.
        config_file.write_text(config_file.read_text() + '[speculative]\nmodee = "none"\n')
        wait_until(lambda: any("speculative.modee" in e["message"] for e in _health(running)["errors"]))
        typo = next(e["message"] for e in _health(running)["errors"] if "speculative.modee" in e["message"])
        assert "Did you mean speculative.mode?" in typo and "keeps its current settings" in typo
        assert _health(running)["models"]["target"] == "tiny-no-fim"
    finally:
        stop_daemon(running.process)


def test_a_daemon_whose_first_load_failed_answers_503_and_recovers_on_a_config_fix(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    config_file = home / "config" / "config.toml"
    config_file.parent.mkdir(parents=True)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(1024))
    update_config_file({"target": str(corrupt), "draft": "none"}, config_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")} | {
        "LOCALSPEC_HOME": str(home)
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "localspec", "serve", "--port", "0", "--threads", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (home / "state" / "daemon.json").exists())
        info = json.loads((home / "state" / "daemon.json").read_text())
        token = (home / "config" / "token").read_text().strip()
        running = RunningDaemon(url=info["url"], token=token, home=home, process=process)
        wait_until(lambda: _health(running)["status"] == "error")
        assert "corrupt.gguf" in _health(running)["errors"][0]["message"]
        refused = httpx.post(
            f"{running.url}/v1/completions",
            json={"prompt": "hi", "max_tokens": 2},
            headers=running.headers,
            timeout=30,
        )
        assert refused.status_code == 503
        assert "corrupt.gguf" in refused.json()["error"]["message"]

        update_config_file({"target": str(tiny_models.target)}, config_file)
        wait_until(lambda: _health(running)["status"] == "ok")
        assert _health(running)["errors"] == []
        served = httpx.post(
            f"{running.url}/v1/completions",
            json={"prompt": "hi", "max_tokens": 2},
            headers=running.headers,
            timeout=30,
        )
        assert served.status_code == 200
    finally:
        stop_daemon(process)


def test_first_load_failure_is_reported_in_health(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(1024))
    with pytest.raises(RuntimeError, match="did not become healthy") as caught:
        start_daemon(tmp_path / "home", ["--target", str(corrupt)], timeout=30)
    assert "corrupt.gguf" in str(caught.value)


def test_the_daemons_connections_send_small_writes_at_once() -> None:
    # A response goes out as headers, then body. With Nagle's algorithm on, the body waits for the client to
    # acknowledge the headers, which a client delays by up to 40 ms: every request after the first on a kept-alive
    # connection took ~44 ms on this VM, /health included. asyncio turns it off (TCP_NODELAY) on connections
    # accepted from a socket made for TCP, which the daemon's listening socket must therefore say it is.
    import asyncio
    import socket

    from localspec.daemon.serve import _bind

    listening = _bind("127.0.0.1", 0)

    async def accepted_nodelay() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(
                writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            )
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listening)
        async with server:
            _, writer = await asyncio.open_connection(*listening.getsockname()[:2])
            value = await accepted
            writer.close()
            return value

    assert asyncio.run(accepted_nodelay()) != 0
