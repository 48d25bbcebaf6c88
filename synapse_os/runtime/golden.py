"""The golden prompt file (bench/golden-prompts.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from synapse_os.errors import UserError

TIERS = ("trivial", "moderate", "high")


@dataclass(frozen=True)
class GoldenPrompt:
    id: str
    tier: str
    prompt: str


def load_golden(path: Path) -> list[GoldenPrompt]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read golden prompts {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    items = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise UserError(f"{path}: expected a mapping with a non-empty 'prompts' list")
    prompts = []
    seen = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not {"id", "tier", "prompt"} <= set(item):
            raise UserError(f"{path}: prompts[{i}] needs id, tier and prompt")
        if item["tier"] not in TIERS:
            raise UserError(f"{path}: prompts[{i}].tier is {item['tier']!r}; use one of "
                            f"{', '.join(TIERS)}")
        if item["id"] in seen:
            raise UserError(f"{path}: prompts[{i}].id {item['id']!r} is used twice")
        seen.add(item["id"])
        prompts.append(GoldenPrompt(str(item["id"]), item["tier"], str(item["prompt"])))
    return prompts
