"""Per-stage accounting: rows in, kept, dropped by reason — and the funnel table built from them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import polars as pl


@dataclass
class StageReport:
    stage: str
    unit: str  # what one row is at this stage: "rows", "problems", "completions"
    rows_in: int
    kept: int
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0
    detail: dict[str, int] = field(default_factory=dict)  # counts that are not drops (e.g. rollouts reused)

    def __post_init__(self):
        self.dropped_by_reason = {k: int(v) for k, v in sorted(self.dropped_by_reason.items()) if v}
        self.detail = {k: int(v) for k, v in sorted(self.detail.items()) if v}
        if self.rows_in != self.kept + self.dropped:
            raise ValueError(
                f"stage '{self.stage}' does not add up: {self.rows_in} in != {self.kept} kept + "
                f"{self.dropped} dropped {self.dropped_by_reason}"
            )

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "dropped": self.dropped}

    @classmethod
    def from_reasons(cls, stage: str, unit: str, reasons: pl.Series, **kw) -> "StageReport":
        """`reasons` holds one entry per input row: null when kept, else why it was dropped."""
        counts = reasons.drop_nulls().value_counts()
        by = ordered({str(r[0]): int(r[1]) for r in counts.iter_rows()})
        return cls(stage, unit, len(reasons), reasons.null_count(), by, **kw)  # kw: seconds, tokens, detail

    def line(self) -> str:
        why = ", ".join(f"{k}={v}" for k, v in self.dropped_by_reason.items()) or "-"
        counts = f"in={self.rows_in:<7} kept={self.kept:<7} dropped={self.dropped:<6}"
        detail = " [" + ", ".join(f"{k}={v}" for k, v in self.detail.items()) + "]" if self.detail else ""
        return f"{self.stage:<13} {self.unit:<12} {counts} ({why}) {self.seconds:.1f} s{detail}"


def ordered(reasons: dict[str, int]) -> dict[str, int]:
    """Drop reasons most frequent first, then by name: one order however the counts were made."""
    return dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def merge_reports(reports: list[StageReport]) -> StageReport:
    """One report for a stage that ran in parts (the rollout shards, the graded slices): its reasons in the order
    `from_reasons` gives them, so it equals the report of the stage run whole."""
    by: dict[str, int] = {}
    detail: dict[str, int] = {}
    for r in reports:
        for k, v in r.dropped_by_reason.items():
            by[k] = by.get(k, 0) + v
        for k, v in r.detail.items():
            detail[k] = detail.get(k, 0) + v
    first = reports[0]
    return StageReport(
        first.stage,
        first.unit,
        sum(r.rows_in for r in reports),
        sum(r.kept for r in reports),
        ordered(by),
        seconds=sum(r.seconds for r in reports),
        tokens=sum(r.tokens for r in reports),
        detail=detail,
    )


def funnel_frame(reports: list[StageReport]) -> pl.DataFrame:
    rows = [
        {**r.as_dict(), "dropped_by_reason": json.dumps(r.dropped_by_reason), "detail": json.dumps(r.detail)}
        for r in reports
    ]
    cols = ["stage", "unit", "rows_in", "kept", "dropped", "dropped_by_reason", "seconds", "tokens", "detail"]
    schema = {
        "stage": pl.String,
        "unit": pl.String,
        "rows_in": pl.Int64,
        "kept": pl.Int64,
        "dropped": pl.Int64,
        "dropped_by_reason": pl.String,
        "seconds": pl.Float64,
        "tokens": pl.Int64,
        "detail": pl.String,
    }
    return pl.DataFrame(rows, schema=schema).select(cols)


def funnel_markdown(reports: list[StageReport]) -> str:
    head = "| stage | unit | in | kept | dropped | by reason | seconds | tokens |\n|---|---|---|---|---|---|---|---|"
    body = [
        f"| {r.stage} | {r.unit} | {r.rows_in} | {r.kept} | {r.dropped} | "
        f"{', '.join(f'{k}: {v}' for k, v in r.dropped_by_reason.items()) or '-'} | {r.seconds:.1f} | {r.tokens} |"
        for r in reports
    ]
    return "\n".join([head, *body])
