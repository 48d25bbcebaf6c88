"""The runtime config file (`runtime.yaml`) that `synapse runtime serve --config` reads.

The profile's `runtime` section is the source of truth; `runtime_config_from_profile` turns
it into the dict the renderer writes to `etc/synapse/runtime.yaml`. This module imports
nothing heavy (no llama_cpp, no fastapi) so the renderer can use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from synapse_os.errors import UserError
from synapse_os.profile.model import Llama, LlamaSettings, Threads
from synapse_os.profile.model import ModelRef as ModelConfig

ROLES = ("main", "small", "draft")
TIERS = ("trivial", "moderate", "high")
Role = Literal["main", "small", "draft"]
Tier = Literal["trivial", "moderate", "high"]
DEFAULT_SEED = 42
DEFAULT_PARALLEL = 4
PYPI_PREFIX = "pypi:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpeculativeConfig(_Strict):
    enabled: bool = False
    lookup: bool = Field(
        False, description="Prompt lookup in batches: draft tokens come from earlier in the "
        "request's own prompt and answer (no draft model).")
    draft_tokens: int = Field(4, ge=1, le=32, description="k tokens the draft proposes per step.")
    auto_off: bool = Field(
        True, description="Switch speculation off for a tier when it is measured slower."
    )
    probe_every: int = Field(
        8, ge=2, le=1000,
        description="Every Nth request of a tier runs without speculation to measure the baseline.",
    )
    min_samples: int = Field(2, ge=1, le=100, description="Samples of each kind before judging.")


class ProvenanceConfig(_Strict):
    path: str = "/var/lib/synapse/runtime/provenance.ndjson"
    fsync_interval_s: float = Field(1.0, ge=0.0, le=3600.0, description="0 = fsync every line.")
    max_bytes: int = Field(64 * 1024 * 1024, ge=4096, description="Rotate past this size.")
    keep: int = Field(5, ge=1, le=1000, description="Rotated files kept (.1 is the newest).")


def _per_tier(trivial: int | None, moderate: int | None, high: int | None
              ) -> dict[Tier, int | None]:
    return {"trivial": trivial, "moderate": moderate, "high": high}


class RouterConfig(_Strict):
    default_max_tokens: dict[Tier, int | None] = Field(
        default_factory=lambda: _per_tier(128, 512, None),
        description="max_tokens when the request gives none; None = the rest of the context.",
    )
    history_window: dict[Tier, int | None] = Field(
        default_factory=lambda: _per_tier(4, 8, None),
        description="Session messages replayed per tier; None = the full history.",
    )


class RuntimeConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=1, le=65535)
    models: dict[Role, ModelConfig]
    threads: Threads = "auto"
    batch: int = Field(512, ge=8, le=8192, description="Prompt evaluation batch size.")
    speculative: SpeculativeConfig = Field(default_factory=SpeculativeConfig)
    queue_size: int = Field(16, ge=1, le=10_000, description="Requests allowed to wait.")
    parallel: int = Field(
        DEFAULT_PARALLEL, ge=1, le=256,
        description="Requests decoded together (continuous batching), each with its own "
        "context of the model's `context` tokens; 1 = one request at a time.",
    )
    deterministic: bool = Field(
        False,
        description="seed 42, temperature 0, one request at a time, no prompt-cache reuse.",
    )
    seed: int = DEFAULT_SEED
    llama: Llama = Field(default_factory=Llama, description="llama.cpp's options "
                         "(profile runtime.llama): throughput unless batch invariance is on.")
    mlock: bool = Field(False, description="Lock the models' weights in RAM (mlock).")
    provenance: ProvenanceConfig = Field(default_factory=ProvenanceConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    max_sessions: int = Field(1000, ge=1, description="Conversation histories kept in memory.")

    @model_validator(mode="after")
    def _check(self) -> RuntimeConfig:
        if "main" not in self.models:
            raise ValueError("models needs a 'main' model")
        if self.speculative.enabled and "draft" not in self.models:
            raise ValueError("speculative.enabled needs a 'draft' model")
        return self

    @property
    def llama_settings(self) -> LlamaSettings:
        """Batch invariance is on by default where exactness is promised: speculative
        decoding (output equal to plain greedy) and deterministic mode."""
        return self.llama.settings(self.speculative.enabled or self.deterministic)

    @property
    def batch_invariant(self) -> bool:
        return self.llama_settings.batch_invariant

    def resolved_threads(self) -> int:
        if isinstance(self.threads, int):
            return self.threads
        return physical_cores_available()


def runtime_config_from_profile(profile: Any) -> dict[str, Any]:
    """The runtime.yaml content for a profile (pure: reads nothing but the profile).

    `threads: auto` stays `auto` unless the profile's hardware section pins a number:
    the service resolves it to physical cores on the machine it runs on.
    """
    rt = profile.runtime
    if rt is None:
        raise ValueError(f"profile {profile.name!r} has no runtime section")
    if rt.engine != "synapse-runtime":
        raise ValueError(
            f"profile {profile.name!r} uses engine {rt.engine!r}; runtime.yaml is only for "
            "the synapse-runtime engine"
        )
    threads: Literal["auto"] | int = rt.threads
    if threads == "auto" and isinstance(profile.hardware.threads, int):
        threads = profile.hardware.threads
    config = RuntimeConfig(
        host=rt.host,
        port=rt.port,
        models={
            role: ModelConfig(
                path=ref.path, sha256=ref.sha256, context=ref.context, gpu_layers=ref.gpu_layers
            )
            for role, ref in rt.models.items()
        },
        threads=threads,
        speculative=SpeculativeConfig(
            enabled=rt.speculative.enabled, lookup=rt.speculative.lookup,
            draft_tokens=rt.speculative.draft_tokens
        ),
        queue_size=rt.queue_size,
        parallel=getattr(rt, "parallel", DEFAULT_PARALLEL),
        provenance=ProvenanceConfig(path=rt.provenance),
        mlock=rt.mlock,
        llama=rt.llama,
    )
    return config.model_dump(mode="json")


def _location(err: Any) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(top level)"


def parse_runtime_config(data: Any, source: str) -> RuntimeConfig:
    if not isinstance(data, dict):
        raise UserError(f"{source}: the runtime config must be a YAML mapping")
    try:
        return RuntimeConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"{source}: {_location(first)}: {first['msg']}") from None


def load_runtime_config(path: Path) -> RuntimeConfig:
    """Read and validate runtime.yaml; model paths are relative to the file's directory."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read runtime config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    config = parse_runtime_config(data, str(path))
    base = path.resolve().parent
    models = {role: _resolve_model(m, base) for role, m in config.models.items()}
    return config.model_copy(update={"models": models})


def _resolve_model(model: ModelConfig, base: Path) -> ModelConfig:
    """Relative paths are relative to the config file; `pypi:<package>` names the PyPI model."""
    if model.path.startswith(PYPI_PREFIX):
        from synapse_os.models import MODEL_PACKAGE, default_model

        if model.path != PYPI_PREFIX + MODEL_PACKAGE:
            raise UserError(f"model path {model.path!r}: the only PyPI model known is "
                            f"{PYPI_PREFIX + MODEL_PACKAGE}")
        path, sha = default_model()
        return model.model_copy(update={"path": str(path), "sha256": model.sha256 or sha})
    return model.model_copy(update={"path": str((base / model.path).resolve())})


def dump_runtime_config(config: RuntimeConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def physical_cores_available(sys_cpu: Path = Path("/sys/devices/system/cpu")) -> int:
    """One inference thread per physical core this process may run on (its CPU affinity,
    e.g. the service's CPUAffinity=)."""
    import os

    return physical_cores(os.sched_getaffinity(0), sys_cpu)


def physical_cores(cpus: Iterable[int], sys_cpu: Path = Path("/sys/devices/system/cpu")) -> int:
    """The physical cores `cpus` lie on: SMT siblings share a core and count once."""
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: count the CPU itself
    return len(cores) or 1
