"""Start the real runtime (`synapse runtime serve`) on a free loopback port for a test module."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import need_tool

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, model: Path, sha: str, roles: tuple[str, ...] = ("main", "small",
                 "draft"), **over: Any) -> None:
    config: dict[str, Any] = {
        "models": {r: {"path": str(model), "sha256": sha, "context": 512} for r in roles},
        "threads": 1,
        "speculative": {"enabled": "draft" in roles, "draft_tokens": 4},
        "queue_size": 2,
        "provenance": {"path": str(path.parent / "provenance.ndjson"), "fsync_interval_s": 0},
    }
    config.update(over)
    path.write_text(yaml.safe_dump(config))


class Server:
    def __init__(self, url: str, proc: subprocess.Popen[str], workdir: Path) -> None:
        self.url = url
        self.proc = proc
        self.workdir = workdir
        self.provenance = workdir / "provenance.ndjson"
        self.saw_loading = False

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", **kw)

    def records(self) -> list[dict[str, Any]]:
        import json

        if not self.provenance.exists():
            return []
        return [json.loads(line) for line in self.provenance.read_text().splitlines()]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def start_server(workdir: Path, socket_activated: bool = False) -> Server:
    """Serve workdir/runtime.yaml; returns once it tells systemd's notify socket READY=1,
    which must come only when /health says ok (the unit is Type=notify). Socket-activated:
    systemd's own systemd-socket-activate opens the port and passes it (LISTEN_FDS), as
    synapse-runtime.socket does through systemd-nspawn; the first connection starts it."""
    port = free_port()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(workdir / "notify.sock"))
    notify.setblocking(False)
    log = (workdir / "server.log").open("w")
    env = os.environ | {"NOTIFY_SOCKET": str(workdir / "notify.sock")}
    serve = [sys.executable, "-m", "synapse_os.cli", "runtime", "serve", "--config",
             str(workdir / "runtime.yaml")]
    if socket_activated:
        need_tool("systemd-socket-activate", "apt-get install systemd")
        # it hands the program only the variables it is told to
        keep = [f"-E{name}={env[name]}" for name in ("NOTIFY_SOCKET", "PYTHONPATH") if name in env]
        argv = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", *keep, *serve]
    else:
        argv = [*serve, "--port", str(port)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env=env)
    log.close()
    url = f"http://127.0.0.1:{port}"
    saw_loading = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("runtime exited:\n" + (workdir / "server.log").read_text())
            try:
                message = notify.recv(4096)
            except BlockingIOError:
                message = b""
            if message:
                assert message == b"READY=1"
                assert httpx.get(f"{url}/health", timeout=10).status_code == 200
                break
            try:
                r = httpx.get(f"{url}/health", timeout=2)
                saw_loading = saw_loading or (r.status_code == 503
                                              and r.json()["status"] == "loading")
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            proc.terminate()
            pytest.fail("runtime did not report ready:\n" + (workdir / "server.log").read_text())
    finally:
        notify.close()
    srv = Server(url, proc, workdir)
    srv.saw_loading = saw_loading
    return srv
