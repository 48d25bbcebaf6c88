"""Tier routing for `model: auto`: a deterministic, local classifier (no model, no network).

Each request is scored from features of its last user message:

| feature            | how it is detected                                          | points |
|--------------------|-------------------------------------------------------------|--------|
| length             | words > 40: +2; > 15: +1; <= 6: -1                           | -1..2  |
| code               | a ``` fence, code syntax, or "write/implement ... function"  | +3     |
| multi-step         | "step by step", first/then/finally, numbered lines, 2+ "?"   | +2/+3  |
| reasoning verbs    | prove, derive, design, analyze, compare, evaluate, trade-off | +3     |
| explanatory verbs  | explain, describe, summarize, how does, why, list, write a   | +1.5   |
| trivial markers    | greeting/thanks, yes/no, arithmetic, "what is the X of", who | -2     |
| long conversation  | more than 2000 characters of earlier messages                 | +1     |

score < 1 is **trivial** (answered by the `small` model), 1 <= score < 3.5 is **moderate**,
score >= 3.5 is **high** (both answered by `main`; high keeps the full context).
Confidence grows with the distance from the nearest threshold: 0.5 at a threshold,
0.99 two points or more away. The same input always gives the same decision.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from synapse_os.runtime.config import Tier

TRIVIAL_BELOW = 1.0
HIGH_FROM = 3.5

_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+|#include|\bfunction\s*\w*\(|=>|\bSELECT\b|\bimport \w+"
    r"|\b(write|implement|code|refactor|debug)\b[^.?!]{0,40}\b(function|script|program|query|"
    r"class|method|regex|parser|algorithm|code|unit tests?)\b"
    r"|\b(python|javascript|typescript|rust|sql|bash|c\+\+|golang)\b",
    re.IGNORECASE,
)
_MULTI_STEP = re.compile(
    r"\bstep[- ]by[- ]step\b|\bfirst\b|\bthen\b|\bfinally\b|\bafterwards\b|\bsteps\b"
    r"|^\s*\d+[.)]\s",
    re.IGNORECASE | re.MULTILINE,
)
_REASONING = re.compile(
    r"\b(prove|derive|design|architect\w*|analy[sz]e|compare|contrast|evaluate|assess|"
    r"trade-?offs?|pros and cons|optimi[sz]e|critique|justify|recommend|plan|strategy|"
    r"estimate|schedule)\b",
    re.IGNORECASE,
)
_EXPLANATORY = re.compile(
    r"\b(explain|describe|summari[sz]e|outline|how (does|do|can|would|is)|why|list|"
    r"differences?|ideas|examples?|translate this|write an? (short|brief)?\s*\w+)\b",
    re.IGNORECASE,
)
_TRIVIAL = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|good (morning|evening|night)|ok|okay|bye)\b"
    r"|\byes or no\b|^\s*(what|how much) is -?\d+(\.\d+)?\s*[-+*/x]\s*-?\d+"
    r"|\bwhat is the (capital|color|colour|name|opposite|plural|meaning) of\b"
    r"|\bwho (wrote|painted|invented|discovered)\b|\bhow many \w+ (are|is) (in|there)\b"
    r"|\bspell\b|^\s*translate '[^']{1,30}'|\bwhat colou?r\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Decision:
    tier: Tier
    confidence: float
    score: float
    features: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(
            str(part.get("text", "")) for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def classify_text(text: str, history_chars: int = 0) -> Decision:
    start = time.perf_counter()
    words = len(text.split())
    features: dict[str, Any] = {"words": words, "history_chars": history_chars}
    score = 0.0
    if words > 40:
        score += 2
    elif words > 15:
        score += 1
    elif words <= 6:
        score -= 1
    code = bool(_CODE.search(text))
    features["code"] = code
    if code:
        score += 3
    steps = len(_MULTI_STEP.findall(text)) + (1 if text.count("?") >= 2 else 0)
    features["multi_step_markers"] = steps
    if steps >= 2:
        score += 3
    elif steps == 1:
        score += 2
    reasoning = bool(_REASONING.search(text))
    features["reasoning"] = reasoning
    if reasoning:
        score += 3
    explanatory = bool(_EXPLANATORY.search(text))
    features["explanatory"] = explanatory
    if explanatory:
        score += 1.5
    trivial = bool(_TRIVIAL.search(text))
    features["trivial_marker"] = trivial
    if trivial:
        score -= 2
    if history_chars > 2000:
        score += 1
    tier: Tier
    if score < TRIVIAL_BELOW:
        tier, margin = "trivial", TRIVIAL_BELOW - score
    elif score < HIGH_FROM:
        tier, margin = "moderate", min(score - TRIVIAL_BELOW, HIGH_FROM - score)
    else:
        tier, margin = "high", score - HIGH_FROM
    confidence = round(min(0.99, 0.5 + 0.25 * margin), 3)
    return Decision(tier, confidence, score, features, time.perf_counter() - start)


def classify_messages(messages: Sequence[dict[str, Any]]) -> Decision:
    """Classify a chat request by its last user message and the size of what came before."""
    last_user = ""
    index = -1
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            last_user = _text_of(messages[i].get("content"))
            index = i
            break
    history = sum(len(_text_of(m.get("content"))) for j, m in enumerate(messages) if j != index)
    return classify_text(last_user, history)
