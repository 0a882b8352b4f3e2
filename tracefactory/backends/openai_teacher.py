"""Any OpenAI-compatible server (`vllm serve`, hosted endpoints) as a Teacher.

One request per prompt with `n=K` (the server samples K continuations of one prefill), up to
`max_concurrency` requests in flight so the server's batch stays full. Chat prompts go to
/chat/completions (the server applies the model's chat template), text prompts to /completions.
Transient faults (5xx, 408, 429, timeouts, refused or dropped connections, 200s with an unreadable or
malformed body) are retried `teacher.retries` times, waiting what a 429/503's `Retry-After` asks (at
most 5 minutes) or else an exponential backoff; a request that still fails comes back as a failed `RequestResult` (no
completions, with the error) instead of failing the batch, so the caller can record it and retry it
on the next run. A prompt the server refuses as longer than the model's context gets no completions,
as with the in-process engine; any other 4xx (wrong model name, bad request) is a configuration
error and fails at once.

A server started with a reasoning parser (`--reasoning-parser deepseek_r1`) splits each chat completion
into `reasoning` (vLLM >= 0.10; `reasoning_content` in older vLLM and DeepSeek's API) and `content`. vLLM's
parser drops everything up to and including a `<think>` the model wrote, then cuts at the first `</think>`:
reasoning before it, content after it (null when nothing follows), and all of it is reasoning, content
null, when the block never closed. `rejoin` puts the completion back together as the model wrote it; on
a vLLM server the think tags' token ids (asked once from its `/tokenize`) and the returned token ids say
whether the model wrote each tag, so even a block closed with nothing after it is told from an unclosed
one. Reasoning fields exist only on /chat/completions: plain /completions text is the raw completion.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from email.utils import parsedate_to_datetime
from typing import Sequence

import httpx

from tracefactory.backends.base import Completion, OnResult, Prompt, RequestResult
from tracefactory.backends.identity import openai_identity
from tracefactory.config import SamplingConfig, TeacherConfig
from tracefactory.errors import BackendError
from tracefactory.grading.think import CLOSE, OPEN, tokens_through
from tracefactory.redact import redact_url as redact

log = logging.getLogger(__name__)
_TOO_LONG = ("maximum context length", "context length", "too long", "max_model_len")
RETRY_STATUS = (408, 429)  # besides every 5xx: request timeout, rate limited
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 300.0  # a server asking for longer is not waited for: the request soft-fails sooner


def retry_after(resp: httpx.Response, default: float) -> float:
    """The wait a 429/503 asks for in `Retry-After` (seconds or an HTTP date), at most MAX_RETRY_AFTER_S;
    `default` (the exponential backoff) when it asks for nothing readable."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


class OpenAITeacher:
    def __init__(self, cfg: TeacherConfig, progress: bool = True, transport: httpx.AsyncBaseTransport | None = None):
        self.cfg = cfg
        self.progress = progress
        self.transport = transport
        self.name = cfg.model
        self.base_url = (cfg.base_url or "").rstrip("/")
        self._tag_ids: dict[str, int] | None = None  # the think tags' token ids, once asked

    @property
    def server_root(self) -> str:
        """The server's root, where vLLM serves /tokenize and /detokenize (beside /v1)."""
        return self.base_url.removesuffix("/v1")

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {os.environ.get(self.cfg.api_key_env, 'EMPTY')}"}

    def _extension(self, path: str, body: dict) -> dict | None:
        """POST to one of vLLM's extension endpoints, retried as generation requests are; None where the server has
        none (not vLLM: a 4xx) or it still fails."""
        for attempt in range(self.cfg.retries + 1):
            try:
                with httpx.Client(base_url=self.server_root, transport=_sync(self.transport), timeout=30) as client:
                    resp = client.post(path, json={"model": self.cfg.model, **body}, headers=self._headers())
                if resp.status_code == 200:
                    return resp.json()
                if resp.status_code < 500 and resp.status_code not in RETRY_STATUS:
                    return None
            except (httpx.HTTPError, ValueError):
                pass
            if attempt < self.cfg.retries:
                time.sleep(min(MAX_BACKOFF_S, self.cfg.retry_backoff_s * 2**attempt))
        log.warning(
            "%s%s failed %d times: the served template / think tags are not known",
            redact(self.server_root),
            path,
            self.cfg.retries + 1,
        )
        return None

    def tag_ids(self) -> dict[str, int]:
        """{tag: token id} for `<think>` and `</think>` where each is one token of the served model's vocabulary."""
        if self._tag_ids is None:
            self._tag_ids = {}
            if self.cfg.return_token_ids:
                for tag in (OPEN, CLOSE):
                    got = self._extension("/tokenize", {"prompt": tag, "add_special_tokens": False}) or {}
                    if len(got.get("tokens") or []) == 1:
                        self._tag_ids[tag] = got["tokens"][0]
        return self._tag_ids

    def rendered_prompt(self, prompt: Prompt) -> str | None:
        """The prompt through the served model's chat template (vLLM's /tokenize then /detokenize); None elsewhere."""
        if isinstance(prompt, str):
            return prompt
        body = {"messages": list(prompt), "add_generation_prompt": True, "add_special_tokens": False}
        tokens = (self._extension("/tokenize", body) or {}).get("tokens")
        if not tokens:
            return None
        return (self._extension("/detokenize", {"tokens": tokens}) or {}).get("prompt")

    def start(self) -> None:
        """Nothing to load: each `generate` opens its own connection pool."""

    def close(self) -> None:
        pass

    def identity(self) -> dict:
        return openai_identity(self.cfg)

    def _body(self, prompt: Prompt, n: int, params: SamplingConfig, seed: int) -> tuple[str, dict]:
        body = {
            "model": self.cfg.model,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": seed,
        }
        if self.cfg.return_token_ids:
            body["return_token_ids"] = True  # vLLM extension: exact per-choice token counts
        if isinstance(prompt, str):
            return "/completions", {**body, "prompt": prompt}
        if prompt and prompt[-1]["role"] == "assistant":  # vLLM extension: continue a partial answer
            body.update(continue_final_message=True, add_generation_prompt=False)
        return "/chat/completions", {**body, "messages": list(prompt)}

    def _parse(self, data: dict) -> list[Completion]:
        choices = sorted(data["choices"], key=lambda c: c["index"])
        tags = self.tag_ids() if any(reasoning_of(c.get("message")) is not None for c in choices) else {}
        texts = [rejoin(c["message"], c.get("token_ids"), tags) if "message" in c else c["text"] for c in choices]
        total = (data.get("usage") or {}).get("completion_tokens") or 0
        chars = sum(len(t or "") for t in texts) or 1
        out = []
        for c, text in zip(choices, texts, strict=True):
            ids = c.get("token_ids")
            # without token ids, split the usage total by text length (exact when n == 1)
            tokens = len(ids) if ids is not None else round(total * len(text or "") / chars)
            through = tokens_through(ids, tags.get(CLOSE)) if ids is not None else None
            out.append(Completion(text or "", tokens, c.get("finish_reason") or "stop", c["index"], through))
        return out

    async def _one(
        self,
        client: httpx.AsyncClient,
        sem: asyncio.Semaphore,
        prompt: Prompt,
        n: int,
        params: SamplingConfig,
        seed: int,
    ) -> RequestResult:
        path, body = self._body(prompt, n, params, seed)
        retries = self.cfg.retries
        async with sem:
            for attempt in range(retries + 1):
                wait = min(MAX_BACKOFF_S, self.cfg.retry_backoff_s * 2**attempt)
                try:
                    resp = await client.post(path, json=body)
                    if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
                        err = f"HTTP {resp.status_code}: {resp.text[:200]}"
                        wait = retry_after(resp, wait)
                    elif resp.status_code >= 400:
                        if resp.status_code == 400 and any(m in resp.text.lower() for m in _TOO_LONG):
                            log.warning("prompt longer than the teacher's context skipped: %s", resp.text[:200])
                            return RequestResult()
                        raise BackendError(
                            f"{redact(self.base_url)}{path} answered {resp.status_code}: {resp.text[:500]}"
                        )
                    else:
                        return RequestResult.of(self._parse(resp.json()))
                except (httpx.TransportError, httpx.TimeoutException) as exc:
                    err = repr(exc)
                except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                    # a 200 whose body is cut off, not JSON, or JSON without `choices` (a proxy's error page)
                    err = f"malformed response: {type(exc).__name__}: {str(exc)[:200]}"
                if attempt < retries:
                    log.warning("teacher request failed (%s); retry %d/%d in %.1f s", err, attempt + 1, retries, wait)
                    await asyncio.sleep(wait)
            log.error("teacher request failed %d times, giving up on it for this run: %s", retries + 1, err)
            return RequestResult.failed(f"{redact(self.base_url)}{path} failed {retries + 1} times, last: {err}")

    async def _all(
        self,
        prompts: Sequence[Prompt],
        n: int,
        params: SamplingConfig,
        seeds: Sequence[int],
        on_result: OnResult | None,
    ) -> list[RequestResult]:
        key = os.environ.get(self.cfg.api_key_env, "EMPTY")
        limits = httpx.Limits(max_connections=self.cfg.max_concurrency)
        sem = asyncio.Semaphore(self.cfg.max_concurrency)

        async def one(i: int, prompt: Prompt, seed: int) -> RequestResult:
            result = await self._one(client, sem, prompt, n, params, seed)
            if on_result:
                on_result(i, result)
            return result

        async with httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.cfg.request_timeout_s,
            limits=limits,
            headers={"Authorization": f"Bearer {key}"},
            transport=self.transport,
        ) as client:
            tasks = [one(i, p, s) for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))]
            return await _gather_with_progress(tasks, self.progress)

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        params: SamplingConfig,
        seeds: Sequence[int] | None = None,
        on_result: OnResult | None = None,
    ) -> list[RequestResult]:
        seeds = list(seeds) if seeds is not None else [params.seed] * len(prompts)
        return asyncio.run(self._all(prompts, n, params, seeds, on_result)) if prompts else []


def reasoning_of(message: dict | None) -> str | None:
    """A chat message's reasoning field: `reasoning` (vLLM 0.32), else `reasoning_content` (older vLLM, DeepSeek)."""
    if not message:
        return None
    found = message.get("reasoning")
    return found if found is not None else message.get("reasoning_content")


def rejoin(message: dict, token_ids: list[int] | None, tags: dict[str, int]) -> str:
    """The completion as the model wrote it, from a reasoning parser's split (see the module). Whether the model
    wrote `<think>` / `</think>` is read from the token ids where the tags' ids are known; otherwise the model is
    taken not to have opened the block (its template did, as R1-distill templates do) and to have closed it
    exactly when there is content."""
    content, reasoning = message.get("content"), reasoning_of(message)
    if reasoning is None:
        return content or ""
    known = token_ids is not None
    opened = known and OPEN in tags and tags[OPEN] in token_ids
    closed = (tags[CLOSE] in token_ids) if known and CLOSE in tags else content is not None
    return (OPEN if opened else "") + reasoning + (CLOSE + (content or "") if closed else "")


def _sync(transport: httpx.AsyncBaseTransport | None) -> httpx.BaseTransport | None:
    """The synchronous twin of a test's async transport (a MockTransport serves both), else None."""
    return transport if isinstance(transport, httpx.BaseTransport) else None


async def _gather_with_progress(coros: list, progress: bool) -> list:
    if not progress:
        return await asyncio.gather(*coros)
    from rich.console import Console
    from rich.progress import Progress

    from tracefactory import console

    async def tick(coro, bar, job):
        result = await coro
        bar.advance(job)
        return result

    with Progress(transient=True, console=Console(file=console.err())) as bar:
        job = bar.add_task("teacher requests", total=len(coros))
        return await asyncio.gather(*(tick(c, bar, job) for c in coros))
