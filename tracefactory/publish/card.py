"""The dataset card of a release (`tracefactory release`): a README for a reader — what the data is, how it
was made (teacher, grading, step filter, selection, rewriting in words), the run's funnel as a table, the
schema, how to load each config, sources and licences, lineage — and its plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from tracefactory.grading.think import EMPTY_RESPONSE, MALFORMED, UNCLOSED
from tracefactory.store.schema import (
    COT_TOKENS,
    CURRICULUM_RANK,
    DIFFICULTY,
    DROP_REASON,
    FINISH_REASON,
    N_ROLLOUTS,
    PASS_RATE,
    PROBLEM_ID,
    REASONING_TOKENS,
    RESPONSE_TOKENS,
    SCHEMA_DIR,
    TEACHER_TOKENS,
    THINK_CLOSED,
    UNSOLVED,
)

PLOTS = {
    "difficulty": "Problems per difficulty bucket",
    "pass_rate": "Teacher pass rate per problem",
    "cot_length": "Chain-of-thought length (tokens) by difficulty",
    "tokens_per_trace": "Teacher tokens spent per accepted trace, by difficulty",
    "reasoning_length": "Reasoning vs response tokens of the kept traces, by difficulty",
}


def trace_stats(rollouts: pl.DataFrame, dataset: pl.DataFrame) -> dict:
    """How the teacher's traces ended: think-block closure and truncation rates over every rollout, mean reasoning
    and response tokens of the kept traces (null rates and means where the teacher does not think)."""
    n = max(len(rollouts), 1)
    thinking = rollouts.filter(pl.col(THINK_CLOSED).is_not_null())

    def mean(frame: pl.DataFrame, col: str):
        value = frame[col].mean() if len(frame) else None
        return None if value is None else round(float(value), 1)

    return {
        "rollouts": len(rollouts),
        "thinking": len(thinking),
        "think_closed_rate": round(thinking[THINK_CLOSED].mean(), 4) if len(thinking) else None,
        "think_unclosed": int((rollouts[DROP_REASON] == UNCLOSED).sum()),
        "think_malformed": int((rollouts[DROP_REASON] == MALFORMED).sum()),
        "empty_response": int((rollouts[DROP_REASON] == EMPTY_RESPONSE).sum()),
        "truncated_rate": round(int((rollouts[FINISH_REASON] == "length").sum()) / n, 4),
        "mean_reasoning_tokens": mean(dataset.filter(pl.col(REASONING_TOKENS).is_not_null()), REASONING_TOKENS),
        "mean_response_tokens": mean(dataset, RESPONSE_TOKENS),
    }


def bucket_order(dataset: pl.DataFrame) -> list[str]:
    """Difficulty buckets in the order the curriculum meets them."""
    return list(dict.fromkeys(dataset.sort(CURRICULUM_RANK)[DIFFICULTY].to_list()))


# ---- plots -----------------------------------------------------------------------------------------


def plots(folder: Path, problems: pl.DataFrame, dataset: pl.DataFrame, rollouts: pl.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [*bucket_order(dataset), *sorted(set(problems[DIFFICULTY].drop_nulls()) - set(dataset[DIFFICULTY]))]
    counts = dict(problems.group_by(DIFFICULTY).len().iter_rows())
    if TEACHER_TOKENS in problems.columns:  # rollouts and step scoring, however many samples each problem drew
        spent = dict(problems.select(PROBLEM_ID, pl.col(TEACHER_TOKENS).fill_null(0)).iter_rows())
    else:  # a release made before problems kept their tokens
        spent = dict(rollouts.group_by(PROBLEM_ID).agg(pl.col(COT_TOKENS).sum()).iter_rows())
    per_bucket_tokens = {
        b: sum(spent.get(p, 0) for p in problems.filter(pl.col(DIFFICULTY) == b)[PROBLEM_ID]) for b in order
    }
    accepted = dict(dataset.group_by(DIFFICULTY).len().iter_rows())

    def save(name: str, draw) -> None:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        draw(ax)
        ax.set_title(PLOTS[name])
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", metadata={"Software": None})
        plt.close(fig)

    def difficulty(ax):
        ax.bar(order, [counts.get(b, 0) for b in order], color="#4c72b0")
        ax.set_ylabel("problems")

    def pass_rate(ax):
        n = max(problems[N_ROLLOUTS].max() or 1, 1)  # pass rates are multiples of 1/n: one bar each
        edges = [(k - 0.5) / n for k in range(n + 2)]
        ax.hist(problems[PASS_RATE].drop_nulls().to_list(), bins=edges, color="#55a868", rwidth=0.85)
        ax.set_xlabel("pass rate")
        ax.set_ylabel("problems")

    def cot_length(ax):
        present = [b for b in order if b in accepted]
        data = [dataset.filter(pl.col(DIFFICULTY) == b)[COT_TOKENS].to_list() for b in present]
        if present:
            ax.boxplot(data, tick_labels=present)
        ax.set_ylabel("tokens")

    def reasoning_length(ax):
        present = [b for b in order if b in accepted]
        kept = [dataset.filter(pl.col(DIFFICULTY) == b) for b in present]
        reasoning = [f[REASONING_TOKENS].mean() or 0 for f in kept]
        response = [f[RESPONSE_TOKENS].mean() or 0 for f in kept]
        ax.bar(present, reasoning, color="#8172b2", label="reasoning (think block)")
        ax.bar(present, response, bottom=reasoning, color="#ccb974", label="response")
        ax.set_ylabel("mean tokens per kept trace")
        ax.legend(loc="upper left", fontsize=8)

    def tokens_per_trace(ax):
        present = [b for b in order if accepted.get(b)]
        total = sum(spent.values()) / max(len(dataset), 1)  # with what unsolved problems cost
        ax.bar([*present, "all (with unsolved)"], [*(per_bucket_tokens[b] / accepted[b] for b in present), total])
        ax.set_ylabel("teacher tokens / accepted trace")

    for name, draw in (
        ("difficulty", difficulty),
        ("pass_rate", pass_rate),
        ("cot_length", cot_length),
        ("tokens_per_trace", tokens_per_trace),
        ("reasoning_length", reasoning_length),
    ):
        save(name, draw)


# ---- the card ---------------------------------------------------------------------------------------


def _schema_rows(table: str) -> list[tuple[str, str, str]]:
    spec = json.loads((SCHEMA_DIR / f"{table}.json").read_text())
    return [(c["name"], c["type"], c.get("description", "")) for c in spec["columns"]]


def _number(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def _reasons(raw: str | None) -> str:
    reasons = json.loads(raw) if raw else {}
    return ", ".join(f"{k} {v:,}" for k, v in reasons.items() if v) or "-"


def card(info: dict, manifest: dict, funnel: pl.DataFrame, configs: list[str], license: str) -> str:
    """The README of a release described by `info` (its release.json) for the run of `manifest`."""
    cfg = manifest["config"]
    teacher = manifest.get("teacher", {})
    buckets = [c for c in configs if c not in ("default", "rollouts", "problems", "pairs", "audit", "rationalized")]
    front = {
        "license": license,
        "pretty_name": f"{info['repo_id'].split('/')[-1]} (tracefactory)",
        "tags": ["reasoning", "chain-of-thought", "distillation", "tracefactory"],
        "task_categories": ["text-generation"],
        "configs": [
            {
                "config_name": c,
                "data_files": [{"split": "train", "path": f"data/{c}/*.parquet"}],
                **({"default": True} if c == "default" else {}),
            }
            for c in configs
        ],
    }
    r, tag, previous = info["added"]["rows"], info["tag"], info["previous_tag"]
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {info['repo_id']}",
        "",
        f"Chain-of-thought traces distilled from **{teacher.get('name', cfg['teacher']['model'])}**, graded against"
        " gold answers, "
        + ("filtered by their step scores and " if cfg["step_score"]["enabled"] else "")
        + f"ordered {cfg['curriculum']['order'].replace('_', ' ')}, made with tracefactory from the run `"
        f"{manifest.get('name')}` ({manifest.get('created')}). Release **{tag}**"
        + (f", after {previous}" if previous else "")
        + ".",
        "",
        f"**Added in {tag}**"
        + (f" (since {previous})" if previous else "")
        + f": {info['added']['problems']:,} new problems, {r['default']:,} training rows,"
        f" {r['rollouts']:,} rollouts. Problems already in an earlier release (same normalised question and"
        " gold) are not repeated; each release adds its own files, and every config loads all of them.",
        "",
        "## Configs",
        "",
        "| config | rows in this release | what it is |",
        "|---|---:|---|",
        f"| `default` | {r['default']:,} | one row per kept trace: `question`, `cot`, `answer`, in curriculum"
        " order (`curriculum_rank`) |",
        *[f"| `{b}` | {r.get(b, 0):,} | the `{b}` difficulty bucket of `default` |" for b in buckets],
        f"| `rollouts` | {r['rollouts']:,} | every trace the teacher wrote, right or wrong, with its verdict"
        " (`correct`) and why it was dropped (`drop_reason`): negatives for DPO |",
        f"| `problems` | {r['problems']:,} | every problem with the teacher's pass rate and its difficulty |",
        *(
            [
                f"| `pairs` | {r.get('pairs', 0):,} | preference pairs for DPO in TRL's conversational format"
                " (`prompt`, `chosen`, `rejected`): a kept trace against another trace of its problem"
                " (`rejected_reason`) |"
            ]
            if "pairs" in configs
            else []
        ),
        *(
            [
                f"| `audit` | {r.get('audit', 0):,} | problems whose gold the rollouts agree against, with the answer"
                " they agree on and a trace that reached it: golds to check by hand |"
            ]
            if "audit" in configs
            else []
        ),
        *(
            [
                f"| `rationalized` | {r.get('rationalized', 0):,} | traces of problems the teacher never solved,"
                " written with the gold as a hint (STaR) and kept only when verified without it (`rationalized` = true)"
                + (": also in `default`" if (cfg.get("rationalize") or {}).get("include") else ": not in `default`")
                + " |"
            ]
            if "rationalized" in configs
            else []
        ),
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{info["repo_id"]}")                # default: curriculum order',
        *[f'{b} = load_dataset("{info["repo_id"]}", "{b}")' for b in buckets[:1]],
        f'rollouts = load_dataset("{info["repo_id"]}", "rollouts")',
        *(
            [f'pairs = load_dataset("{info["repo_id"]}", "pairs")    # trl.DPOTrainer(train_dataset=pairs["train"])']
            if "pairs" in configs
            else []
        ),
        "```",
        "",
        f'A release is a tag: `load_dataset("{info["repo_id"]}", revision="{tag}")`.',
        "",
        "## How it was made",
        "",
        f"- **Teacher**: `{teacher.get('name')}` ({teacher.get('kind')}), {_budget(cfg, funnel)},"
        f" temperature {cfg['sampling']['temperature']}, top-p {cfg['sampling']['top_p']},"
        f" at most {cfg['sampling']['max_tokens']} tokens, seed {cfg['sampling']['seed']}.",
        "- **Grading**: the final answer extracted from each trace is checked against the gold with Math-Verify"
        f" ({cfg['grade']['timeout_s']} s budget per answer"
        + (", truncated traces dropped" if cfg["grade"].get("drop_truncated") else "")
        + ").",
        f"- **Step filter**: {_step_filter(cfg)}",
        f"- **Selection**: the {cfg['select']['keep']} shortest correct trace(s) per problem; **difficulty** from the"
        f" teacher's pass rate (bucket lower bounds {', '.join(f'{n} ≥ {b}' for n, b in cfg['difficulty']['buckets'])};"
        f" pass rate 0 is `{UNSOLVED}`); **curriculum** {cfg['curriculum']['order'].replace('_', ' ')}.",
        f"- **Rewriting and filtering of problems**: {_problem_stages(cfg)}",
        *_pairs(cfg, funnel),
        *_rationalize(cfg, funnel),
        *_pseudo_gold(cfg, funnel),
        "",
        *_traces(info.get("traces") or {}),
        *_audit(cfg, info.get("audit")),
        "## Funnel",
        "",
        "What each stage of the run kept (the whole run; this release holds its new problems).",
        "",
        "| stage | unit | in | kept | dropped | reasons | seconds |",
        "|---|---|---:|---:|---:|---|---:|",
        *[
            f"| {f['stage']} | {f['unit']} | {_number(f['rows_in'])} | {_number(f['kept'])} |"
            f" {_number(f['rows_in'] - f['kept'])} | {_reasons(f.get('dropped_by_reason'))} | {f['seconds']:,.1f} |"
            for f in funnel.iter_rows(named=True)
        ],
        "",
        "## Plots",
        "",
        *[f"![{title}](plots/{name}.png)\n" for name, title in PLOTS.items()],
        "## Schema (`default` and the difficulty configs)",
        "",
        "| column | type | description |",
        "|---|---|---|",
        *[f"| `{n}` | {t} | {d} |" for n, t, d in _schema_rows("dataset")],
        "",
        "## Sources and licence",
        "",
        f"Released under `{license}`.",
        "",
        *_sources(manifest),
        "",
        "## Lineage",
        "",
        f"`manifest.json` (input hashes, teacher identity, seeds, package versions, code version"
        f" `{manifest.get('code_version')}`) and `config.yaml` (the resolved config, config hash"
        f" `{manifest.get('config_hash')}`) are beside the data; `release.json` says what this release added and"
        " `problem_hashes.parquet` lists every problem released so far.",
        "",
    ]
    return "\n".join(lines)


def _audit(cfg: dict, audit: dict | None) -> list[str]:
    """The card's section on golds the rollouts agree against (stages/audit.py), with the most confident ones."""
    a = cfg.get("audit") or {}
    if not a.get("enabled") or audit is None:
        return []
    kept = "kept out of `default`" if a.get("exclude", True) else "still in `default` (`audit.exclude` off)"
    gold = a.get("gold_share", 0.0)
    reach = "none reaching the gold" if not gold else f"at most {gold:.0%} reaching the gold"
    lines = [
        "## Golds that look wrong",
        "",
        f"{audit['suspects']:,} of this release's {audit['problems']:,} problems have a gold their rollouts agree"
        f" against: one other answer from at least {a['share']:.0%} of the rollouts with an answer and at least"
        f" {a['min_votes']} of them, {reach}. Their traces are {kept}; the `audit` config lists them all with the"
        " first trace that reached the other answer, for a person to judge.",
        "",
    ]
    if audit["first"]:
        lines += ["| problem | question | gold | rollouts' answer | share |", "|---|---|---|---|---:|"]
        for r in audit["first"]:
            question = " ".join(r["question"].split())
            question = question if len(question) <= 90 else question[:89] + "…"
            lines.append(
                f"| `{r['problem_id']}` | {question.replace('|', '/')} | `{r['answer']}` | `{r['majority_answer']}`"
                f" | {r['majority_share']:.0%} ({r['majority_votes']} of {r['n_answered']}) |"
            )
        lines.append("")
    return lines


def _traces(t: dict) -> list[str]:
    """The card's section on how the traces (of this release's problems) ended."""
    if not t:
        return []
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = ["## Traces", ""]
    if t.get("thinking"):
        lines += [
            f"The teacher reasons in a think block: `cot` is the whole assistant turn (`<think>` … `</think>` then the"
            " response), `reasoning` and `response` are its two parts, and the answer is read from the response only."
            f" Of {t['rollouts']:,} rollouts, {pct(t['think_closed_rate'])} closed their think block;"
            f" {t['think_unclosed']:,} stopped without closing it (dropped as `think_unclosed`: an answer inside an"
            f" unfinished block is not an answer), {t.get('think_malformed', 0):,} closed it twice or opened another"
            f" (`think_malformed`), {t.get('empty_response', 0):,} wrote nothing after it (`empty_response`), and"
            f" {pct(t['truncated_rate'])} were cut at `max_tokens`."
            f" Kept traces average {t['mean_reasoning_tokens']} reasoning and {t['mean_response_tokens']} response"
            " tokens.",
            "",
            "The `messages` column is the SFT conversation (the prompt's turns as the teacher was sent them, then the"
            " assistant turn = `cot`, think block inside), the format TRL's `SFTTrainer` reads.",
        ]
    else:
        lines += [
            f"{pct(t['truncated_rate'])} of {t['rollouts']:,} rollouts were cut at `max_tokens`; kept traces average"
            f" {t['mean_response_tokens']} tokens. `messages` holds each trace as an SFT conversation.",
        ]
    return [*lines, ""]


def _budget(cfg: dict, funnel: pl.DataFrame) -> str:
    """How many samples each problem got: sampling.n, or what the adaptive budget did (from the funnel's rollout
    row: its rounds and why problems stopped)."""
    budget = cfg["sampling"].get("budget") or {"policy": "fixed"}
    if budget["policy"] == "fixed":
        return f"{cfg['sampling']['n']} samples per problem"
    _, detail = _stage_row(funnel, "rollout")
    stops = ", ".join(f"{k.removeprefix('stopped_')} {v:,}" for k, v in detail.items() if k.startswith("stopped_"))
    limit = f", at most {budget['run_tokens']:,} teacher tokens in all" if budget.get("run_tokens") else ""
    return (
        f"an adaptive budget: {budget['first']} samples per problem, then more for the problems still open (the"
        f" count doubling, at most {budget['max']}{limit}) over {detail.get('rounds', '?')} rounds; problems stopped"
        f" as {stops or 'n/a'}"
    )


def _pairs(cfg: dict, funnel: pl.DataFrame) -> list[str]:
    """The preference pairs' line: the rule, and what it found (the funnel's pairs row)."""
    pairs = cfg.get("pairs") or {}
    row, detail = _stage_row(funnel, "pairs")
    if not pairs.get("enabled") or row is None:
        return []
    rules = ", then ".join(f"`{r}`" for r in pairs["rejected"])
    found = ", ".join(f"{k.removeprefix('rejected_')} {v:,}" for k, v in detail.items() if k.startswith("rejected_"))
    return [
        f"- **Preference pairs**: up to {pairs['per_problem']} per problem, a kept trace against a rejected one of"
        f" the same problem by the first rule that has one ({rules}; a wrong answer of the closest length first);"
        f" {detail.get('pairs', 0):,} pairs ({found or 'none'}), {row['dropped']:,} of {row['rows_in']:,}"
        " problems with kept traces had no trace to set against them."
    ]


def _stage_row(funnel: pl.DataFrame, stage: str) -> tuple[dict | None, dict]:
    """A stage's funnel row (None: the run has none) and its `detail`."""
    rows = funnel.filter(pl.col("stage") == stage).to_dicts()
    return (rows[0], json.loads(rows[0]["detail"] or "{}")) if rows else (None, {})


def _pseudo_gold(cfg: dict, funnel: pl.DataFrame) -> list[str]:
    """The pseudo-gold line (source.gold: majority): how many problems had no gold and how many got one."""
    row, _ = _stage_row(funnel, "pseudo_gold")
    if (cfg.get("source") or {}).get("gold") != "majority" or row is None:
        return []
    a = cfg.get("audit") or {}
    return [
        f"- **Pseudo-golds**: {row['rows_in']:,} problems came without a gold; {row['kept']:,} got their"
        f" rollouts' majority answer as one (≥ {a.get('share')} of the answers and ≥ {a.get('min_votes')} votes),"
        f" the rest stayed without. Their rows say `gold_source = majority`: graded against the teacher's own answer,"
        " never verified against a real gold — filter them out (`gold_source = 'source'`) for verified data only."
    ]


def _rationalize(cfg: dict, funnel: pl.DataFrame) -> list[str]:
    """The STaR line: how rationales were asked and verified, and what survived (the funnel's rationalize row)."""
    rat = cfg.get("rationalize") or {}
    row, detail = _stage_row(funnel, "rationalize")
    if not rat.get("enabled") or row is None:
        return []
    check = (
        f"the question without the hint and the rationale's steps but its last lead the teacher to the gold"
        f" (in ≥ {rat.get('verify_share', 0.5):g} of {rat['verify_n']} continuations)"
        if rat["verify"] == "continue"
        else "its answer is the gold"
    )
    skipped = detail.get("skipped_gold_suspect", 0)
    return [
        f"- **Rationalization (STaR)**: the {detail.get('problems_tried', 0):,} problems no rollout solved"
        + (f" (not the {skipped:,} with a suspect gold)" if skipped else "")
        + f" were asked again with the gold as a hint, {rat['n']} samples each; a rationale is kept when it reaches"
        f" the gold, never mentions the hint, has ≥ {rat['min_steps']} steps and {check}."
        f" {detail.get('problems_recovered', 0):,} problems recovered ({row['kept']:,} rationales;"
        f" dropped: {_reasons(row['dropped_by_reason'])})."
    ]


def _problem_stages(cfg: dict) -> str:
    rewrite, dedup, decon = cfg.get("rewrite", {}), cfg.get("dedup", {}), cfg.get("decontaminate", {})
    parts = [f"rewriting {', '.join(rewrite['kinds'])}" if rewrite.get("enabled") else "no rewriting"]
    near = f"duplicates and near-duplicates removed (MinHash, Jaccard ≥ {dedup.get('near_threshold')})"
    parts.append(near if dedup.get("enabled") else "no dedup")
    if decon.get("enabled"):
        names = ", ".join(b["name"] for b in decon.get("benchmarks", []))
        parts.append(f"questions sharing a {decon.get('ngram')}-gram with {names} removed")
    else:
        parts.append("no decontamination")
    return "; ".join(parts) + "."


def _step_filter(cfg: dict) -> str:
    s = cfg.get("step_score", {})
    if not s.get("enabled"):
        return "off (traces are not scored step by step)."
    if s["scorer"] == "monte_carlo":
        how = (
            f"each step scored by Monte-Carlo continuations of the teacher ({s['n']} per step, {s['label']} labels,"
            f" {s['search']} search, Math-Shepherd style)"
        )
    else:
        how = f"each step scored by the process reward model `{s.get('prm_model')}`"
    return (
        f"steps split by {s['split']}; {how}; a trace is kept when the {s['aggregate']} of its step scores is above"
        f" {s['threshold']} (unscored traces: {s['unscored']})."
    )


def _sources(manifest: dict) -> list[str]:
    src = manifest.get("inputs", {}).get("source", {})
    path = src.get("path")
    name = Path(path).name if path else manifest["config"]["source"].get("path")
    out = [f"- Problems: `{name}`" + (f" (sha256 `{src['sha256'][:16]}…`)" if src.get("sha256") else "")]
    if path:  # the licence notes shipped beside the source file
        folder = Path(path).parent
        for note in ("SOURCE.md", "LICENSE"):
            lines = [ln.strip() for ln in (folder / note).read_text().splitlines()] if (folder / note).is_file() else []
            said = next((ln for ln in lines if "licen" in ln.lower()), next((ln for ln in lines if ln), None))
            if said:
                out.append(f"  - {note}: {said.lstrip('# ')}")
    out.append(
        "- Traces: written by the teacher above; its licence and terms of use apply to them as well as this one."
    )
    return out
