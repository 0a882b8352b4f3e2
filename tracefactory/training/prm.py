"""Train a process reward model from a run's Monte-Carlo step labels (Math-Shepherd).

    tracefactory train-prm RUN_DIR [RUN_DIR ...] --out DIR

Training data: every trace of the runs that has step scores (`step_score.scope: all` scores the
wrong-answer traces too — they hold most of the bad steps). Labels as in Math-Shepherd: steps before the
first bad one are positive, the first bad one negative, later ones dropped (`labels: hard`), or each
kept step's Monte-Carlo value as a soft target (`labels: soft`). Identical (question, steps) traces
are one example weighted by their count. A seeded share of problem families (an original with its
variants) is held out and the model's agreement with the Monte-Carlo labels on them is reported in the model
folder's card.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

import polars as pl

from tracefactory.errors import ConfigError
from tracefactory.store.io import RunDir
from tracefactory.store.schema import (
    CORRECT,
    FIRST_BAD_STEP,
    N_CORRECT,
    PROBLEM_ID,
    QUESTION,
    REWRITE_OF,
    STEP_SCORES,
    STEPS,
)

SEPARATOR = "<extra_0>"
Labels = Literal["hard", "soft"]


@dataclass(frozen=True)
class Example:
    problem_id: str
    family: str  # the original problem a variant was made from (itself for an original)
    question: str
    steps: tuple[str, ...]
    targets: tuple[float, ...]  # P(step good), one per kept step (steps after the first bad one are dropped)
    weight: int = 1  # how many times the runs sampled this trace: its weight in the loss
    correct: bool = True  # the trace reached the gold (the traces the factory's step filter judges)


def targets_of(scores: Sequence[float], first_bad: int | None, labels: Labels = "hard") -> tuple[float, ...]:
    """Math-Shepherd's labels for one scored trace: good up to the first bad step, that one bad, the rest
    dropped. `soft`: each kept step's Monte-Carlo value instead (the first bad step's is 0)."""
    kept = len(scores) if first_bad is None else first_bad + 1
    if labels == "soft":
        return tuple(float(s) for s in scores[:kept])
    return tuple(1.0 if i != first_bad else 0.0 for i in range(kept))


def examples_from_runs(runs: Sequence[str | Path], labels: Labels = "hard", unsolved: bool = False) -> list[Example]:
    """The step-scored traces of `runs` (their `rollouts` and `problems` tables), one per distinct
    (question, steps) weighted by how often it was sampled (a trace the teacher writes 8 times out of 8 counts
    8 times in the loss, as if trained on every sample, in an eighth of the compute), in a stable order.

    Problems the teacher never solved are left out unless `unsolved`: there no continuation reaches the gold
    from any prefix, so every first step is labelled bad, right or wrong — the labels say "too hard for the
    completer", not "this step is wrong", and a PRM learns to flag hard questions instead of bad steps."""
    from tracefactory.stages.dedup import root_of

    seen: dict[tuple[str, tuple[str, ...]], Example] = {}
    for run in map(Path, runs):
        if not (run / "rollouts").exists() or not (run / "problems").exists():
            raise ConfigError("RUN_DIR", str(run), "a finished run directory (with rollouts/ and problems/)")
        problems = RunDir(run).read_table("problems")
        source = dict(problems.select(PROBLEM_ID, REWRITE_OF).iter_rows())
        question = dict(problems.select(PROBLEM_ID, QUESTION).iter_rows())
        scored = RunDir(run).read_table("rollouts").filter(pl.col(STEP_SCORES).is_not_null())
        if not unsolved:
            solved = problems.filter(pl.col(N_CORRECT) > 0)[PROBLEM_ID]
            scored = scored.filter(pl.col(PROBLEM_ID).is_in(solved.implode()))
        for pid, steps, scores, bad, correct in scored.select(
            PROBLEM_ID, STEPS, STEP_SCORES, FIRST_BAD_STEP, CORRECT
        ).iter_rows():
            if bad is None and not correct:  # a wrong answer: its last step missed the gold, whatever came before
                bad = len(steps) - 1
            key = (question[pid], tuple(steps))
            if key in seen:
                seen[key] = replace(seen[key], weight=seen[key].weight + 1)
            else:
                targets = targets_of(scores, bad, labels)
                seen[key] = Example(pid, root_of(pid, source), question[pid], tuple(steps), targets, 1, bool(correct))
    if not seen:
        raise ConfigError(
            "RUN_DIR", ", ".join(map(str, runs)), "runs with step scores (step_score.enabled, scorer monte_carlo)"
        )
    return sorted(seen.values(), key=lambda e: (e.problem_id, e.steps))


def held_out(family: str, share: float, seed: int) -> bool:
    """Whether a problem family is held out: a seeded hash, so the split does not depend on what else is in the data."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{family}".encode()).digest()[:8], "big")
    return h / 2**64 < share


def data_hash(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.question, e.steps, e.targets, e.weight], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


# ---- the model -------------------------------------------------------------------------------------


def build_tokenizer(out: Path | None = None):
    """The teacher's character-level tokenizer and chat template, plus the separator token."""
    import tempfile

    from tracefactory.training.teacher import build_tokenizer as teacher_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = teacher_tokenizer(Path(tmp))
    tok.add_special_tokens({"additional_special_tokens": [SEPARATOR]})
    if out is not None:
        tok.save_pretrained(out)
    return tok


def build_net(init: str | Path, vocab_size: int, seed: int, layers: int | None = None):
    """(its Qwen2 config, the model): a Qwen2 backbone holding the first `layers` layers of the causal LM `init`, and
    Qwen2.5-Math-PRM's two-layer head — a torch ModuleDict {"model", "score"} (torch is imported here: optional)."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2Model

    torch.manual_seed(seed)
    teacher = AutoModelForCausalLM.from_pretrained(str(init), dtype=torch.float32)
    t = teacher.config
    if layers is not None and not 1 <= layers <= t.num_hidden_layers:
        raise ConfigError("--layers", str(layers), f"1 to {t.num_hidden_layers} (the layers of {init})")
    kept = layers or t.num_hidden_layers  # the teacher's first `kept` layers (and its final norm)
    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=kept,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps,
        rope_theta=(t.rope_parameters or {}).get("rope_theta", 10000.0),
        tie_word_embeddings=False,
        bos_token_id=t.bos_token_id,
        eos_token_id=t.eos_token_id,
        pad_token_id=t.pad_token_id,
    )
    backbone = Qwen2Model(cfg)
    state = {k.removeprefix("model."): v for k, v in teacher.state_dict().items() if k.startswith("model.")}
    state = {k: v for k, v in state.items() if not k.startswith("layers.") or int(k.split(".")[1]) < kept}
    emb = state["embed_tokens.weight"]
    if emb.shape[0] >= vocab_size:  # e.g. the R1-shaped teacher: its think tags would take the separator's id
        raise ConfigError(
            "--init",
            str(init),
            f"a causal LM whose vocabulary is the PRM tokenizer's {vocab_size - 1} base "
            f"tokens (it has {emb.shape[0]}): the plain teacher, data/teacher-plain",
        )
    extra = emb.mean(0, keepdim=True).repeat(vocab_size - emb.shape[0], 1)  # the separator starts as the mean
    state["embed_tokens.weight"] = torch.cat([emb, extra])
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith((".q_proj.bias", ".k_proj.bias", ".v_proj.bias")) for k in missing):
        raise RuntimeError(f"teacher weights do not map onto Qwen2: missing {missing}, unexpected {unexpected}")
    for k in missing:  # Llama has no q/k/v biases: zero ones give the same function
        dict(backbone.named_parameters())[k].data.zero_()
    head = nn.Sequential(nn.Linear(t.hidden_size, t.hidden_size), nn.ReLU(), nn.Linear(t.hidden_size, 2))
    return cfg, nn.ModuleDict({"model": backbone, "score": head})


def step_logits(net, ids, mask):
    """The head's two logits (bad, good) at every position."""
    hidden = net["model"](input_ids=ids, attention_mask=mask).last_hidden_state
    return net["score"](hidden)


def encode(tok, examples: Sequence[Example], max_len: int) -> list[tuple[list[int], list[int], list[float], int]]:
    """(token ids, separator positions, targets, weight) per example; examples longer than `max_len` are left out."""
    from tracefactory.backends.prm import prm_text

    sid = tok.convert_tokens_to_ids(SEPARATOR)
    rows = []
    for e in examples:
        ids = tok(prm_text(tok, e.question, e.steps, SEPARATOR, system=None), add_special_tokens=False)["input_ids"]
        where = [i for i, t in enumerate(ids) if t == sid]
        if len(ids) <= max_len and len(where) == len(e.steps):
            rows.append((ids, where[: len(e.targets)], list(e.targets), e.weight))
    return rows


def _batch(rows, pad_id: int):
    import torch

    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    b_idx, t_idx, target, weight = [], [], [], []
    for i, (x, where, y, w) in enumerate(rows):
        ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
        b_idx += [i] * len(where)
        t_idx += where
        target += y
        weight += [float(w)] * len(where)
    return ids, mask, torch.tensor(b_idx), torch.tensor(t_idx), torch.tensor(target), torch.tensor(weight)


def step_probabilities(net, rows, pad_id: int, batch: int = 64) -> list[list[float]]:
    """P(good) at every labelled separator of each row (the model in eval mode, no gradients)."""
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            ids, mask, b, t, _, _ = _batch(chunk, pad_id)
            p = step_logits(net, ids, mask)[b, t].float().softmax(-1)[:, 1].tolist()
            for x in chunk:
                out.append(p[: len(x[1])])
                p = p[len(x[1]) :]
    return out


def train(
    examples: Sequence[Example],
    out: str | Path,
    init: str | Path,
    *,
    epochs: int = 6,
    batch: int = 32,
    lr: float = 5e-4,
    seed: int = 0,
    holdout: float = 0.2,
    max_len: int = 512,
    layers: int | None = None,
    describe: dict | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Fine-tunes the PRM on the examples of the families not held out, saves it to `out` in
    Qwen2.5-Math-PRM's format (bf16 safetensors, tokenizer with the separator, README card,
    training.json) and returns the training record."""
    import torch
    from safetensors.torch import save_file

    from tracefactory.backends.prm import load_tokenizer
    from tracefactory.backends.step_eval import auroc

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    build_tokenizer(out)
    tok = load_tokenizer(str(out))  # exactly as `scorer: prm` will load it
    cfg, net = build_net(init, len(tok), seed, layers)
    train_ex = [e for e in examples if not held_out(e.family, holdout, seed)]
    eval_ex = [e for e in examples if held_out(e.family, holdout, seed)]
    rows = encode(tok, train_ex, max_len)
    if not rows:
        raise ConfigError("RUN_DIR", "", "at least one step-scored trace outside the held-out families")
    steps_total = epochs * math.ceil(len(rows) / batch)
    head_params = list(net["score"].parameters())
    opt = torch.optim.AdamW(
        [{"params": net["model"].parameters(), "lr": lr}, {"params": head_params, "lr": lr * 2}],
        weight_decay=0.01,
    )
    base = [g["lr"] for g in opt.param_groups]
    t0, step, losses = time.time(), 0, []
    for _ in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        order.sort(key=lambda i: len(rows[i][0]) // 64)  # similar lengths together: little padding ...
        chunks = [order[i : i + batch] for i in range(0, len(order), batch)]
        rng.shuffle(chunks)  # ... in a random order of batches
        net.train()
        for chunk in chunks:
            scale = min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps_total))
            for g, b in zip(opt.param_groups, base, strict=True):
                g["lr"] = b * scale
            ids, mask, b_idx, t_idx, target, weight = _batch([rows[i] for i in chunk], tok.pad_token_id)
            logp = step_logits(net, ids, mask)[b_idx, t_idx].log_softmax(-1)
            loss = -(weight * (target * logp[:, 1] + (1 - target) * logp[:, 0])).sum() / weight.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if progress:
                progress(step, steps_total, loss.item())
    seconds = time.time() - t0
    # the ModuleDict's names are the checkpoint's: model.* (backbone) and score.* (head)
    weights = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in net.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"))
    config = cfg.to_dict() | {
        "architectures": ["Qwen2ForProcessRewardModel"],
        "num_labels": 2,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # held-out agreement, measured on the saved (bf16-rounded) weights
    net.load_state_dict({k: v.float() for k, v in weights.items()})
    threshold, flag_rate = calibrate(net, tok, [e for e in examples if e.correct], max_len)
    held = encode(tok, eval_ex, max_len)
    probs = step_probabilities(net, held, tok.pad_token_id)
    pos = [p for r, ps in zip(held, probs, strict=True) for p, y in zip(ps, r[2], strict=True) if y >= 0.5]
    neg = [p for r, ps in zip(held, probs, strict=True) for p, y in zip(ps, r[2], strict=True) if y < 0.5]
    record = {
        "examples": len(examples),
        "train_traces": len(rows),
        "train_steps": _good_bad(rows, weighted=False),
        "train_steps_as_sampled": _good_bad(rows, weighted=True),
        "held_out_traces": len(held),
        "held_out_families": sorted({e.family for e in eval_ex}),
        "held_out_auroc_vs_labels": auroc(pos, neg),
        "threshold": threshold,
        "labels_flag_rate": flag_rate,
        "data_sha256": data_hash(examples),
        "init": _shown(init),
        "epochs": epochs,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "holdout": holdout,
        "optimizer_steps": step,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "train_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in net.parameters()),
        "layers": cfg.num_hidden_layers,
        **(describe or {}),
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(card(record))
    return record


def calibrate(net, tok, correct: Sequence[Example], max_len: int) -> tuple[float | None, float | None]:
    """The step-filter threshold that makes the PRM flag the share of the runs' correct-answer traces that their
    Monte-Carlo labels flagged (a trace is flagged when its lowest step probability is below the threshold),
    and that share. Read from the data the PRM learnt from, never from an evaluation set."""
    rows = encode(tok, [replace(e, targets=(1.0,) * len(e.steps)) for e in correct], max_len)
    if not rows:
        return None, None
    weights = [e.weight for e in correct]
    rate = sum(w for e, w in zip(correct, weights, strict=True) if 0.0 in e.targets) / sum(weights)
    lows = sorted((min(p), r[3]) for p, r in zip(step_probabilities(net, rows, tok.pad_token_id), rows, strict=True))
    total, seen = sum(w for _, w in lows), 0
    for low, w in lows:  # the weighted quantile at `rate`: the lowest minima are the flagged ones
        seen += w
        if seen > rate * total:
            return round(low, 4), rate
    return round(lows[-1][0], 4), rate


def _shown(path: str | Path) -> str:
    """A path as the card shows it: relative to the working directory when inside it (no home directories)."""
    p = Path(path).resolve()
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(path)


def _good_bad(rows, weighted: bool) -> dict[str, int]:
    """Good and bad step labels in encoded rows: of the distinct traces, or as sampled (times their weights)."""
    targets = [(y, r[3] if weighted else 1) for r in rows for y in r[2]]
    return {"good": sum(w for y, w in targets if y >= 0.5), "bad": sum(w for y, w in targets if y < 0.5)}


def card(r: dict) -> str:
    held = r["held_out_auroc_vs_labels"]
    return f"""# {r.get("name", "tracefactory PRM")}

A process reward model in Qwen2.5-Math-PRM's format (`Qwen2ForProcessRewardModel`: a Qwen2 backbone and a
two-class head read at the `<extra_0>` separator after each step; the score of a step is the probability of
class 1). {r["parameters"]:,} parameters, bf16 safetensors, character-level tokenizer with the embedded
teacher's chat template (`Q: <question>\\nA: <steps>`). Loads with `step_score: {{scorer: prm, prm_model: <this
folder>}}` (vLLM's pooling runner).

## How it was made

`{r.get("command", "tracefactory train-prm")}` — initialised from `{r["init"]}`, its first {r["layers"]}
layers (Llama layers copied into Qwen2 layers, zero q/k/v biases, the separator's embedding the mean of the
others; new head), fine-tuned for
{r["epochs"]} epochs ({r["optimizer_steps"]} optimizer steps, batch {r["batch"]}, AdamW lr {r["lr"]}, seed
{r["seed"]}) in {r["train_seconds"]} s on CPU; final loss {r["final_loss"]:.4f}.

Training data: step labels from Monte-Carlo estimation with the teacher (Math-Shepherd: a step is good when a
continuation of its prefix reaches the gold; steps after the first bad one dropped), {r.get("labels", "hard")}
labels, from {", ".join(r.get("runs", [])) or "the given runs"} (problems the teacher never solved
{r.get("unsolved_problems", "left out")}): {r["examples"]:,} distinct traces, of which
{r["train_traces"]:,} trained on ({r["train_steps"]["good"]:,} good steps, {r["train_steps"]["bad"]:,} bad; as sampled,
counting each trace as often as the teacher wrote it: {r["train_steps_as_sampled"]["good"]:,} good,
{r["train_steps_as_sampled"]["bad"]:,} bad).
SHA-256 of the training examples: `{r["data_sha256"]}`.

Held out: {len(r["held_out_families"])} problem families (an original with its variants; seeded share
{r["holdout"]}), {r["held_out_traces"]:,} traces; step AUROC against their Monte-Carlo labels:
{"n/a" if held is None else f"{held:.3f}"}. The held-out family ids are in `training.json`.

Step-filter threshold: **{r["threshold"]}** — a correct-answer trace whose lowest step probability is at or below
it is flagged; at it the model flags the share of the training runs' correct-answer traces that the Monte-Carlo labels
flagged ({(r["labels_flag_rate"] or 0):.1%}). Use it as `step_score.threshold` with `aggregate: min`.

Licence: that of the initial model and of the training runs' problems (for `data/prm`: the embedded teacher and
the demo problems, both this project's own, Apache-2.0).
"""


def main_train(runs: Sequence[Path], out: Path, labels: Labels, init: Path, unsolved: bool = False, **kw) -> dict:
    """`tracefactory train-prm`: the examples of `runs`, trained into `out`, with a progress bar."""
    from tqdm import tqdm

    from tracefactory import console

    examples = examples_from_runs(runs, labels, unsolved)
    describe = {
        "runs": [str(r) for r in runs],
        "labels": labels,
        "unsolved_problems": "kept" if unsolved else "left out",
        "command": kw.pop("command", None),
    }
    with tqdm(desc="training PRM", unit="step", file=console.err(), dynamic_ncols=True) as bar:

        def tick(step, total, loss):
            bar.total = total
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(step - bar.n)

        return train(examples, out, init, describe=describe, progress=tick, **kw)
