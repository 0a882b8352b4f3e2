"""Prompt templates as plain functions."""

from __future__ import annotations

from tracefactory.backends.base import Prompt
from tracefactory.config import PromptConfig

# For real teachers (GPU recipes): the instruction DeepSeek-R1 / Qwen-Math use for boxed answers.
BOXED_INSTRUCTION = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


def build_prompt(question: str, cfg: PromptConfig) -> Prompt:
    text = cfg.template.replace("{question}", question)
    if not cfg.chat:
        return text
    messages = [{"role": "system", "content": cfg.system}] if cfg.system else []
    return messages + [{"role": "user", "content": text}]
