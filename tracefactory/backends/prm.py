"""A process reward model served by vLLM's pooling runner, in Qwen2.5-Math-PRM's format.

The trace goes in as the assistant turn with the separator token after every step; the model's
two-class head is read at each separator (`token_classify` with `PoolerConfig(step_tag_id=...)`)
and the step score is the positive-class probability there. Without the right `step_tag_id` the
outputs are silently empty, so the separator is checked before anything is scored, and every
output must have exactly one row per step.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path
from typing import Sequence

from tracefactory.backends.hub import ensure_model_available, load_tokenizer  # noqa: F401  (training.prm loads it here)
from tracefactory.backends.scorers import StepItem
from tracefactory.backends.vllm_teacher import import_vllm, shutdown_engine
from tracefactory.errors import BackendError, ConfigError
from tracefactory.store.schema import StepScores

log = logging.getLogger(__name__)
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def prm_text(tok, question: str, steps: Sequence[str], separator: str, system: str | None = QWEN_PRM_SYSTEM) -> str:
    """A trace as a PRM reads it: the chat template over (system,) user and an assistant turn with the
    separator after every step — the same text for training (`training.prm`) and scoring."""
    body = "".join(step + separator for step in steps)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": body},
    ]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


HEAD_PARAMETERS = ("score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias")


def checkpoint_tensors(model_dir: Path) -> set[str]:
    """The tensor names of a local safetensors checkpoint (one file or an index of shards), read from the headers."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    names: set[str] = set()
    for f in model_dir.glob("*.safetensors"):
        with open(f, "rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            names |= set(json.loads(fh.read(size))) - {"__metadata__"}
    return names


def check_head(model: str) -> None:
    """vLLM's loader does not require a linear layer's bias to be in the checkpoint, and leaves a missing one
    uninitialised: the scores are then NaN in one process and saturated in the next. Refuse such a PRM."""
    path = Path(model)
    if not path.is_dir() or not any(path.glob("*.safetensors")):
        return  # a hub id or another format: nothing to read here
    missing = [n for n in HEAD_PARAMETERS if n not in checkpoint_tensors(path)]
    if missing:
        raise ConfigError(
            "step_score.prm_model",
            model,
            "a Qwen2ForProcessRewardModel checkpoint with its head's weights and biases (missing: "
            f"{', '.join(missing)}; vLLM would leave them uninitialised)",
        )


class VLLMPRMScorer:
    def __init__(
        self,
        model: str,
        separator: str = "<extra_0>",
        system: str | None = QWEN_PRM_SYSTEM,
        max_model_len: int | None = None,
        bad_below: float = 0.5,
        kv_cache_gib: float | None = None,
        dtype: str = "auto",
    ):
        self.model = model
        self.separator = separator
        self.system = system
        self.max_model_len = max_model_len
        self.bad_below = bad_below  # the first step scored at or below this is the first bad one
        self.kv_cache_gib = kv_cache_gib
        self.name = f"prm:{model}"
        self.dtype = dtype
        self._llm = None
        self._tok = None

    def _separator_id(self, tok) -> int:
        sid = tok.convert_tokens_to_ids(self.separator)
        if sid is None or sid == tok.unk_token_id or tok.convert_ids_to_tokens(sid) != self.separator:
            raise ConfigError(
                "step_score.prm_separator",
                self.separator,
                f"a single token of the PRM's tokenizer ({self.model} has no such token)",
            )
        return sid

    def start(self) -> None:
        if self._llm is not None:
            return
        ensure_model_available(self.model, "step_score.prm_model")
        vllm = import_vllm()
        from vllm.config import PoolerConfig
        from vllm.platforms import current_platform

        self._tok = load_tokenizer(self.model)
        sid = self._separator_id(self._tok)  # before the engine loads: fail fast
        check_head(self.model)
        kw: dict = dict(
            model=self.model, runner="pooling", pooler_config=PoolerConfig(step_tag_id=sid), dtype=self.dtype
        )
        if self.max_model_len:
            kw["max_model_len"] = self.max_model_len
        if current_platform.is_cpu():
            # float32 on CPU: the scores train-prm measured (bf16 agrees to ~1e-5). The NaN / saturated scores
            # once blamed on bf16 were a checkpoint without the head's biases (see check_head)
            if self.dtype == "auto":
                kw["dtype"] = "float32"
            kw.update(
                enable_chunked_prefill=False,
                kv_cache_memory_bytes=int((self.kv_cache_gib or 1) * (1 << 30)),
                enforce_eager=True,
            )
        try:
            self._llm = vllm.LLM(**kw)
        except Exception as exc:
            raise BackendError(f"vLLM could not load PRM '{self.model}': {exc}") from exc

    def format(self, item: StepItem) -> str:
        return prm_text(self._tok, item.question, item.steps, self.separator, self.system)

    def score(self, items: Sequence[StepItem]) -> list[StepScores]:
        self.start()
        limit = self._llm.llm_engine.model_config.max_model_len
        # token ids, not text: vLLM would tokenize with the class transformers maps the model type to (see
        # load_tokenizer), which for a small vocabulary is not the tokenizer the PRM was trained with
        ids = [self._tok(self.format(it), add_special_tokens=False)["input_ids"] for it in items]
        fits = [len(x) <= limit for x in ids]
        prompts = [{"prompt_token_ids": x} for x, ok in zip(ids, fits, strict=True) if ok]
        outs = iter(self._llm.encode(prompts, pooling_task="token_classify", use_tqdm=False) if prompts else [])
        results = []
        for item, ok in zip(items, fits, strict=True):
            if not ok:
                results.append(StepScores([], None, note="too_long"))
                continue
            probs = next(outs).outputs.data
            if probs.shape[0] != len(item.steps):  # e.g. a step text that itself contains the separator
                results.append(StepScores([], None, note="step_count_mismatch"))
                continue
            scores = [float(p) for p in probs[:, 1]]
            if any(math.isnan(x) for x in scores):
                log.warning("PRM returned NaN scores for %s; left unscored", item.problem_id)
                results.append(StepScores([], None, note="nan_scores"))
                continue
            bad = next((i for i, s in enumerate(scores) if s <= self.bad_below), None)
            results.append(StepScores(scores, bad, probes=1))
        return results

    def close(self) -> None:
        self._llm = shutdown_engine(self._llm)
