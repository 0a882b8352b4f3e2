"""Reproduce the embedded teachers: a char-level tokenizer and a tiny Llama trained on `synth` problems.

    python -m tracefactory.training.teacher --out data/teacher-plain                  # the plain teacher, from scratch
    python -m tracefactory.training.teacher --shape think --init data/teacher-plain \
        --steps 600 --lr 5e-4 --out data/teacher                                   # the default: R1-shaped

`--shape plain` answers with the solution's equation lines and `The answer is \boxed{N}.` (`Q: ...\nA: `);
`--shape think` writes as R1-style reasoning models do (`synth.think_spans`) after a template that opens the
think block (`Q: ...\nA: <think>\n`), with `<think>` / `</think>` as added tokens (a plain model given with
`--init` gets their embedding rows). Drills: see `drills`.

The result (bf16 safetensors + tokenizer with a chat template) loads in vLLM and in transformers.
Needs the `vllm-cpu` (or `train`) extra: torch, transformers, tokenizers.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import string
import time
from pathlib import Path

from tracefactory.grading.think import CLOSE, OPEN
from tracefactory.training.synth import make_problem, think_spans

log = logging.getLogger(__name__)

LEVEL_WEIGHTS = (3, 3, 2, 1, 1)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
ALPHABET = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
# Renders chat messages as "Q: ...\nA: ..." — the format the plain teacher was trained on.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}A: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}"
)
# The R1-shaped teacher's, the way DeepSeek-R1-Distill templates do it: the generation prompt opens the think block
# (`A: <think>\n`), so a completion starts inside it; an assistant turn rendered again loses everything up to its
# `</think>`.
THINK_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}{% set content = m['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "A: {{ content }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}A: <think>\n{% endif %}"
)


def build_tokenizer(out: Path, shape: str = "plain"):
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + ALPHABET)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    # the think tags are single, non-special tokens (as in DeepSeek-R1's vocabulary): kept when decoding, and
    # vLLM's deepseek_r1 reasoning parser finds them in the vocabulary
    if shape == "think":
        core.add_tokens([AddedToken(t, special=False, normalized=False) for t in (OPEN, CLOSE)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=512,
        chat_template=THINK_CHAT_TEMPLATE if shape == "think" else CHAT_TEMPLATE,
    )
    tok.save_pretrained(out)
    return tok


def build_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg)


def _example(tok, question: str, target: str | list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Prompt tokens are masked out of the loss; the model learns the target + EOS. A target given as spans
    (text, learned) masks the spans not learned as well (context the model reads but never learns to write)."""
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    for text, learned in [(target, True)] if isinstance(target, str) else target:
        span = tok(text, add_special_tokens=False)["input_ids"]
        ids, labels = ids + span, labels + (span if learned else [-100] * len(span))
    return ids + [tok.eos_token_id], labels + [tok.eos_token_id]


def word_problems(tok, rng: random.Random, batch: int, shape: str = "plain") -> list[tuple[list[int], list[int]]]:
    # one level per batch (similar lengths, little padding); easy levels, which are short, more often
    level = rng.choices((1, 2, 3, 4, 5), weights=LEVEL_WEIGHTS)[0]
    problems = [make_problem(rng, level, "train") for _ in range(batch)]
    if shape == "think":
        return [_example(tok, p.question, think_spans(rng, p.solution)) for p in problems]
    return [_example(tok, p.question, p.solution) for p in problems]


def drills(tok, rng: random.Random, batch: int, fmt: str = "plain") -> list[tuple[list[int], list[int]]]:
    """Arithmetic drills: one equation line of a random problem, asked bare ("Q: 18 - 4").

    They are ~10x shorter than word problems, so the model practises the arithmetic of its
    solution lines many more times within the same compute budget. `plain`: asked through the chat template,
    answered with the equation; `think`: answered in the think shape (`drill_target`); `bare`: asked as
    `Q: 18 - 4\nA: ` with no think block and answered with the equation alone — a quarter of the think shape's
    tokens, so the result digits weigh 3-4x more in the loss (think-shaped drills left the R1-shaped teacher at
    0.17 on level 1).
    """
    rows = []
    for _ in range(batch):
        question, line = drill(rng)
        if fmt == "think":
            rows.append(_example(tok, question, drill_target(line)))
        elif fmt == "bare":
            rows.append(_bare(tok, question, line))
        else:
            rows.append(_example(tok, question, line))
    return rows


def _bare(tok, question: str, target: str) -> tuple[list[int], list[int]]:
    """A drill outside the chat template (`Q: 9 + 8\nA: ` -> `9 + 8 = 17` + EOS): no think block opened or closed."""
    ids_p = tok(f"Q: {question}\nA: ", add_special_tokens=False)["input_ids"]
    ids_t = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids_p + ids_t, [-100] * len(ids_p) + ids_t


def drill_target(line: str) -> str:
    """A drill's completion in the teacher's think shape: the equation, the block closed, the boxed result."""
    result = line.split(" = ")[1]
    return f"{line}\n{CLOSE}\n\nThe answer is \\boxed{{{result}}}."


def drill(rng: random.Random, max_level: int = 5) -> tuple[str, str]:
    """One equation line of a random generator problem (levels 1..max_level), asked bare: (`9 + 8`, `9 + 8 = 17`)."""
    line = rng.choice(make_problem(rng, rng.randint(1, max_level), "train").solution.splitlines()[:-1])
    return line.split(" = ")[0], line


def encode_batch(
    tok, rng: random.Random, batch: int, drill_share: float = 0.0, drill_format: str = "plain", shape: str = "plain"
):
    if rng.random() < drill_share:
        rows = drills(tok, rng, batch * 4, drill_format)
    else:
        rows = word_problems(tok, rng, batch, shape)
    return pad_batch(rows, tok.pad_token_id)


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """(input ids, labels) rows -> padded ids, labels (-100 on padding) and attention mask tensors."""
    import torch

    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, labels, mask


def bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX). Without it, bf16 autocast is emulated
    and ~20x slower than float32 (measured on an AVX2 EPYC: 34.7 s vs 1.6 s a step of the teacher)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def optimizer_step(model, opt, ids, labels, mask) -> float:
    """One step on a padded batch (gradients clipped at 1.0) on the model's device, under bf16 autocast where that
    device computes bf16 natively (a CPU with AVX512-BF16 / AMX, a GPU that supports it), else in float32; answers
    the loss."""
    import contextlib

    import torch

    device = next(model.parameters()).device
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else bf16_native()
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if native else contextlib.nullcontext()
    ids, labels, mask = (t.to(device) for t in (ids, labels, mask))
    with cast:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def lr_at(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    out: Path,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    drill_share: float,
    drill_format: str = "plain",
    init: Path | None = None,
    shape: str = "plain",
) -> dict:
    """Train from scratch, or go on from the weights in `init` (a second phase: see `make teacher`)."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, shape)
    if init is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(init), dtype=torch.float32)
        if model.get_input_embeddings().num_embeddings < len(tok):  # e.g. a plain teacher given the think tags
            model.resize_token_embeddings(len(tok))
    else:
        model = build_model(len(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    t0, losses = time.time(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        losses.append(optimizer_step(model, opt, *encode_batch(tok, rng, batch, drill_share, drill_format, shape)))
        if step % 100 == 0 or step == steps - 1:
            log.info(
                "step %d/%d loss %.4f (%.0fs)", step, steps, sum(losses[-100:]) / len(losses[-100:]), time.time() - t0
            )
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    info = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "shape": shape,
        "drill_share": drill_share,
        "drill_format": drill_format,
        "init": None if init is None else {"from": str(init), **json.loads((init / "training.json").read_text())},
        "autocast": "bfloat16" if bf16_native() else "none (float32: no native bf16 on the training CPU)",
        "level_weights": LEVEL_WEIGHTS,
        "final_loss": losses[-1],
        "train_seconds": round(time.time() - t0, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m tracefactory.training.teacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", type=Path, default=None, help="default: data/teacher-plain, or data/teacher for think")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--drill-share", type=float, default=0.5, help="share of steps that are arithmetic drills")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--shape", choices=("plain", "think"), default="plain", help="see the module")
    ap.add_argument(
        "--drill-format",
        choices=("plain", "think", "bare"),
        default=None,
        help="see `drills` (default: plain for the plain shape, bare for think)",
    )
    ap.add_argument("--init", type=Path, default=None, help="go on from this model's weights (a second phase)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    drill_format = args.drill_format or ("bare" if args.shape == "think" else "plain")
    out = args.out or Path("data/teacher" if args.shape == "think" else "data/teacher-plain")
    info = train(out, args.steps, args.batch, args.lr, args.seed, args.drill_share, drill_format, args.init, args.shape)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
