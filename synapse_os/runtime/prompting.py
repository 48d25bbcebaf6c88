"""Turning OpenAI chat messages into a prompt string for a loaded model.

Uses the GGUF's own chat template when it has one (as llama-cpp-python does); Gemma
models without one (the small test model) get Gemma's turn format; anything else gets
a plain "role: text" transcript.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from synapse_os.runtime.engine import LoadedModel
from synapse_os.runtime.router import _text_of


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]
    add_bos: bool


def format_chat(model: LoadedModel, messages: Sequence[dict[str, Any]]) -> ChatPrompt:
    metadata: dict[str, str] = getattr(model, "metadata", {})
    template = metadata.get("tokenizer.chat_template")
    if template:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos_id = int(model.llm.token_eos())
        bos_id = int(model.llm.token_bos())
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_text(eos_id) if eos_id >= 0 else "",
            bos_token=model.token_text(bos_id) if bos_id >= 0 else "",
        )
        result = formatter(messages=list(messages))  # type: ignore[arg-type]
        stop = (result.stop if isinstance(result.stop, list)
                else [result.stop] if result.stop else [])
        return ChatPrompt(result.prompt, tuple(stop), add_bos=not result.added_special)
    if metadata.get("general.architecture", "").startswith("gemma"):
        parts = []
        system = ""
        for m in messages:
            role, text = m.get("role"), _text_of(m.get("content"))
            if role == "system":
                system += text + "\n\n"
                continue
            turn = "model" if role == "assistant" else "user"
            if turn == "user" and system:
                text, system = system + text, ""
            parts.append(f"<start_of_turn>{turn}\n{text}<end_of_turn>\n")
        parts.append("<start_of_turn>model\n")
        return ChatPrompt("".join(parts), ("<end_of_turn>",), add_bos=True)
    lines = [f"{m.get('role')}: {_text_of(m.get('content'))}" for m in messages]
    return ChatPrompt("\n".join(lines) + "\nassistant:", ("\nuser:",), add_bos=True)
