"""Loopback fleet for tests and bench/bench_fleet.py: real `sshd` instances on 127.0.0.1
high ports (their own config, host keys and authorized key), an inventory with
host_vars, and `ansible-playbook` runs against them. No pytest here: a missing component
raises Missing with its install command (tests turn that into a failure)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

SSHD = "/usr/sbin/sshd"


class Missing(RuntimeError):
    pass


def need(name: str, install: str, path: str | None = None) -> str:
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if not found:
        raise Missing(f"{name} is required; install it with: {install}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop the listener and every session process it forked."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        psutil.wait_procs(children, timeout=5)


@dataclass
class Fleet:
    """Keys, sshd instances and an inventory directory under `base`."""

    base: Path
    servers: list[Sshd] = field(default_factory=list)

    def __post_init__(self) -> None:
        need("sshd", "apt-get install openssh-server", SSHD)
        need("ssh-keygen", "apt-get install openssh-client")
        need("ansible-playbook", "pip install -e '.[fleet]'")
        self.keys = self.base / "keys"
        self.keys.mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "synapse-fleet-test",
                        "-f", str(self.keys / "client")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(self.keys / "host_ed25519")], check=True)
        shutil.copyfile(self.keys / "client.pub", self.keys / "authorized_keys")
        os.chmod(self.keys / "authorized_keys", 0o600)
        # privilege separation directory sshd insists on (the package's tmpfiles.d makes it)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.inventory = self.base / "inventory"
        (self.inventory / "host_vars").mkdir(parents=True)
        self.control = Path("/tmp") / f"sfcp{os.getpid()}-{free_port()}"  # short: a socket path
        self.control.mkdir(mode=0o700)

    def start(self, name: str) -> Sshd:
        port = free_port()
        config = self.base / f"sshd-{name}.conf"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {self.keys / 'host_ed25519'}\n"
            f"PidFile none\nAuthorizedKeysFile {self.keys / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp /usr/lib/openssh/sftp-server\n")
        log = self.base / f"sshd-{name}.log"
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        server = Sshd(name, port, proc, log)
        self.servers.append(server)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd for {name} exited: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return server
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd for {name} did not listen on 127.0.0.1:{port}")

    def write_inventory(self, hosts: dict[str, dict[str, object]],
                        extra_hosts: dict[str, int] | None = None,
                        filename: str = "hosts.ini",
                        ports: dict[str, int] | None = None) -> Path:
        """hosts.ini listing `hosts` (name -> host_vars) in order, each on its SSH port
        (`ports`, default: this fleet's sshd instances); `extra_hosts` (name -> port) are
        listed with only a port (e.g. nobody listening)."""
        ports = ports if ports is not None else {s.name: s.port for s in self.servers}
        lines = ["[synapse]"]
        for name in hosts:
            lines.append(f"{name} ansible_host=127.0.0.1 ansible_port={ports[name]}")
        for name, port in (extra_hosts or {}).items():
            lines.append(f"{name} ansible_host=127.0.0.1 ansible_port={port}")
        lines += ["", "[synapse:vars]", "ansible_user=root",
                  f"ansible_ssh_private_key_file={self.keys / 'client'}",
                  "ansible_become=false",
                  f"ansible_python_interpreter={sys.executable}", ""]
        ini = self.inventory / filename
        ini.write_text("\n".join(lines))
        for name, values in hosts.items():
            (self.inventory / "host_vars" / f"{name}.yml").write_text(
                "---\n" + yaml.safe_dump(values, sort_keys=True))
        return ini

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "ANSIBLE_HOME": str(self.base / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(self.base / "ansible-local"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_PIPELINING": "True",
            # one SSH connection per host, kept for the test session (stop() ends it)
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control),
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=300s "
                                "-o UserKnownHostsFile=/dev/null "
                                "-o StrictHostKeyChecking=no -o LogLevel=ERROR "
                                "-o ConnectTimeout=5",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
        })
        return env

    def playbook(self, site: Path, inventory: Path | str, *args: str,
                 timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ansible-playbook", "-i", str(inventory), str(site), *args],
                              env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.base)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()
        # the client side of the shared connections (ssh -M ... ControlPath in our dir)
        mine = [p for p in psutil.process_iter(["cmdline"])
                if any(str(self.control) in a for a in (p.info["cmdline"] or []))]
        for proc in mine:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(mine, timeout=5)
        shutil.rmtree(self.control, ignore_errors=True)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host: {'alpha': {'ok': 5, 'changed': 0, ...}}."""
    out: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap and ":" in line and "=" in line:
            host, _, rest = line.partition(":")
            counters = {}
            for item in rest.split():
                key, _, value = item.partition("=")
                if value.isdigit():
                    counters[key] = int(value)
            out[host.strip()] = counters
    return out
