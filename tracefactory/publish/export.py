"""A run's dataset in the forms SFT trainers read (`tracefactory export`).

`messages` (TRL's `SFTTrainer`, open-r1's releases): `messages` = [{role, content}], the prompt's turns as the
teacher was sent them and the assistant turn = `cot` (think block inside). `sharegpt` (LLaMA-Factory,
OpenThoughts): `conversations` = [{from, value}] with `human` / `gpt` turns, and the system prompt, if any, in
its own `system` column. Rows keep curriculum order and the columns a trainer may filter on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from tracefactory.publish.query import query_arrow
from tracefactory.store.schema import ANSWER, CURRICULUM_RANK, DIFFICULTY, MESSAGES, PROBLEM_ID, QUESTION

Format = Literal["messages", "sharegpt"]
KEEP = (PROBLEM_ID, QUESTION, ANSWER, DIFFICULTY, CURRICULUM_RANK)
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}


def sharegpt(turns: list[dict]) -> tuple[str | None, list[dict]]:
    """(system prompt or None, the other turns as ShareGPT {from, value})."""
    system = next((t["content"] for t in turns if t["role"] == "system"), None)
    rest = [{"from": SHAREGPT_ROLES[t["role"]], "value": t["content"]} for t in turns if t["role"] != "system"]
    return system, rest


def sft_frame(run_dir: str | Path, fmt: Format = "messages") -> pl.DataFrame:
    data = pl.from_arrow(query_arrow(run_dir, "SELECT * FROM dataset ORDER BY curriculum_rank"))
    if fmt == "messages":
        return data.select(MESSAGES, *KEEP)
    converted = [sharegpt(turns) for turns in data[MESSAGES].to_list()]
    conversations = pl.Series(
        "conversations", [c for _, c in converted], dtype=pl.List(pl.Struct({"from": pl.String, "value": pl.String}))
    )
    return data.select(*KEEP).with_columns(conversations, pl.Series("system", [s for s, _ in converted], pl.String))


def export(run_dir: str | Path, output: str | Path, fmt: Format = "messages") -> int:
    """Write the SFT form of `run_dir`'s dataset to `output` (.jsonl or .parquet); answers the rows written."""
    frame, output = sft_frame(run_dir, fmt), Path(output)
    if output.suffix == ".parquet":
        frame.write_parquet(output)
    elif output.suffix in (".jsonl", ".json"):
        frame.write_ndjson(output)
    else:
        raise ValueError(f"{output}: expected a .jsonl or .parquet file name")
    return len(frame)
