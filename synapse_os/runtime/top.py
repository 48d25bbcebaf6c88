"""`synapse top`: a live rich panel fed by the runtime's /metrics and the OS."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

ROLE_TIERS = {"main": "moderate, high", "small": "trivial", "draft": "draft (speculative)"}


@dataclass
class Scrape:
    at: float
    ok: bool
    error: str = ""
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def total(self, name: str, **labels: str) -> float:
        return sum(v for lab, v in self.samples.get(name, [])
                   if all(lab.get(k) == want for k, want in labels.items()))

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.samples.get(name, [])


def scrape(url: str) -> Scrape:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    now = time.monotonic()
    try:
        resp = httpx.get(f"{url.rstrip('/')}/metrics", timeout=2)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        return Scrape(now, False, str(exc) or type(exc).__name__)
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return Scrape(now, True, samples=samples)


def zram_usage() -> tuple[int, int, int] | None:
    """(original bytes, compressed bytes, disk size) summed over zram devices, or None."""
    devices = sorted(Path("/sys/block").glob("zram*"))
    if not devices:
        return None
    orig = compr = size = 0
    for dev in devices:
        try:
            fields = (dev / "mm_stat").read_text().split()
            orig += int(fields[0])
            compr += int(fields[1])
            size += int((dev / "disksize").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return orig, compr, size


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _bar(percent: float, width: int = 20) -> Text:
    filled = round(width * percent / 100)
    color = "green" if percent < 50 else "yellow" if percent < 85 else "red"
    return Text("█" * filled + "·" * (width - filled), style=color)


def render(url: str, history: deque[Scrape], cores: list[float],
           vram: dict[str, int] | None = None) -> Panel:
    last = history[-1]
    if not last.ok:
        return Panel(Text(f"runtime at {url} unreachable: {last.error}", style="bold red"),
                     title="synapse top")
    out = "synapse_tokens_total"
    rate_now = 0.0
    if len(history) >= 2 and history[-2].ok:
        prev = history[-2]
        rate_now = (last.total(out, direction="out") - prev.total(out, direction="out")) / max(
            last.at - prev.at, 1e-9)
    minute = [s for s in history if s.ok and last.at - s.at <= 60]
    rate_min = 0.0
    if len(minute) >= 2:
        rate_min = (last.total(out, direction="out") - minute[0].total(out, direction="out")) / (
            max(last.at - minute[0].at, 1e-9))
    depth = last.total("synapse_queue_depth")
    capacity = last.total("synapse_queue_capacity")
    ready = last.total("synapse_ready") == 1

    models = Table(title="models", expand=True)
    for col in ("role", "serves", "file", "quant", "RAM weights", "RAM context", "VRAM"):
        models.add_column(col)
    memory: dict[tuple[str, str], float] = {
        (lab["role"], lab["kind"]): v for lab, v in last.series("synapse_model_memory_bytes")}
    for lab, value in last.series("synapse_model_loaded"):
        if value != 1:
            continue
        role = lab["role"]
        models.add_row(role, ROLE_TIERS.get(role, "?"), lab["path"].rsplit("/", 1)[-1][:40],
                       lab["quantization"], _mib(memory.get((role, "weights"), 0)),
                       _mib(memory.get((role, "context"), 0)),
                       _mib(vram[role]) if vram and role in vram else "-")

    traffic = Table(title="traffic", expand=True, show_header=False)
    traffic.add_column("what")
    traffic.add_column("value")
    traffic.add_row("status", Text("ready", "green") if ready else Text("loading", "yellow"))
    traffic.add_row("tokens/s now", f"{rate_now:.1f}")
    traffic.add_row("tokens/s last minute", f"{rate_min:.1f}")
    traffic.add_row("queue depth", f"{depth:.0f} / {capacity:.0f} waiting allowed")
    traffic.add_row("requests", f"{last.total('synapse_requests_total'):.0f}")
    for tier in ("trivial", "moderate", "high"):
        proposed = last.total("synapse_speculative_proposed_tokens_total", tier=tier)
        accepted = last.total("synapse_speculative_accepted_tokens_total", tier=tier)
        on = last.total("synapse_speculative_enabled", tier=tier) == 1
        rate = f"{accepted / proposed:.0%}" if proposed else "-"
        traffic.add_row(f"acceptance {tier}",
                        f"{rate} ({accepted:.0f}/{proposed:.0f}) spec {'on' if on else 'off'}")

    system = Table(title="system", expand=True, show_header=False)
    system.add_column("what")
    system.add_column("value")
    for i, pct in enumerate(cores):
        line = _bar(pct)
        line.append(f" {pct:5.1f}%")
        system.add_row(f"cpu{i}", line)
    mem = psutil.virtual_memory()
    system.add_row("RAM", f"{_mib(mem.used)} used of {_mib(mem.total)}")
    z = zram_usage()
    system.add_row("zram", "none" if z is None else
                   f"{_mib(z[0])} stored in {_mib(z[1])} (size {_mib(z[2])})")
    below = Table.grid(expand=True, padding=(0, 1))
    below.add_column(ratio=1)
    below.add_column(ratio=1)
    below.add_row(traffic, system)
    return Panel(Group(models, below), title=f"synapse top — {url}")


def gpu_memory_by_role() -> dict[str, int] | None:
    """VRAM is only shown when nvidia-smi exists; per-process figures are not split by role."""
    import shutil

    if not shutil.which("nvidia-smi"):
        return None
    from synapse_os.proc import run

    result = run(["nvidia-smi", "--query-compute-apps=used_memory",
                  "--format=csv,noheader,nounits"], check=False, timeout=5)
    if result.returncode != 0:
        return None
    total = sum(int(x) for x in result.stdout.split() if x.isdigit()) * 2**20
    return {"main": total}


def run_top(url: str, interval: float, once: bool) -> None:
    history: deque[Scrape] = deque(maxlen=int(120 / max(interval, 0.1)) + 2)
    psutil.cpu_percent(percpu=True)
    console = Console()
    if once:
        history.append(scrape(url))
        time.sleep(interval)
        history.append(scrape(url))
        console.print(render(url, history, psutil.cpu_percent(percpu=True), gpu_memory_by_role()))
        return
    with Live(console=console, screen=False, auto_refresh=False,
              vertical_overflow="visible") as live:
        try:
            while True:
                history.append(scrape(url))
                live.update(render(url, history, psutil.cpu_percent(percpu=True),
                                   gpu_memory_by_role()), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


__all__: list[Any] = ["run_top", "render", "scrape"]
