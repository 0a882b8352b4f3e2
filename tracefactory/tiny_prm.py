"""Build a tiny process reward model with Qwen2.5-Math-PRM's architecture and interface.

    python -m tracefactory.tiny_prm --out /tmp/tiny-prm

Real PRMs (7B) cannot be loaded on this project's CPU machines. This model has the same
`Qwen2ForProcessRewardModel` layout (a Qwen2 backbone + `score` head with two labels) and a
tokenizer with the `<extra_0>` step separator, so loading, batching and output shapes can be
tested under vLLM's pooling runner. Its weights are random: its scores mean nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tracefactory.teacher_train import build_tokenizer

SEPARATOR = "<extra_0>"


def build(out: Path, hidden: int = 128, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    tok.add_special_tokens({"additional_special_tokens": [SEPARATOR]})
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    backbone = Qwen2Model(cfg)
    weights = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    weights["score.0.weight"] = torch.randn(hidden, hidden) * 0.05
    weights["score.2.weight"] = torch.randn(2, hidden) * 0.05
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, str(out / "model.safetensors"))
    config = cfg.to_dict() | {
        "architectures": ["Qwen2ForProcessRewardModel"],
        "num_labels": 2,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    print(build(ap.parse_args().out))
