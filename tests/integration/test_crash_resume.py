"""SIGKILL `tracefactory run` (real vLLM engine) during rollout, grading and writing; the re-run's
dataset equals an uninterrupted run's, no completion was generated twice, and after every kill no
process of the killed run (engine core, workers, Prefect server, watchdog) is left."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tracefactory.store import io

pytestmark = pytest.mark.vllm
CLI = [sys.executable, "-m", "tracefactory.cli", "run"]


def _args(out: Path, source: Path, verbose: bool = False, extra: dict | None = None) -> list[str]:
    sets = {
        "source.path": source,
        "sampling.n": 4,
        "sampling.budget.policy": "fixed",  # 4 samples per problem; the adaptive budget below
        "run.shard_size": 20,
        "run.flush_every": 3,
        "step_score.enabled": "false",
        "rewrite.enabled": "false",  # the source's own problems: this test is about crashes
        "rationalize.enabled": "false",  # ... of the rollouts (the hinted requests': test_flow_fake.py)
        "run.progress": "false",
        **(extra or {}),
    }
    sets = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    return [*CLI, "--out", str(out), *sets, *(["--verbose"] if verbose else [])]


def _start(
    out: Path, source: Path, failpoint: str | None = None, verbose: bool = False, extra: dict | None = None
) -> subprocess.Popen:
    """`tracefactory run` in its own process group (the engine and Prefect server die with it); what it
    prints goes to `proc.console` (a file)."""
    env = {**os.environ, "TRACEFACTORY_FAILPOINT": failpoint or ""}
    path = out.parent / f"{out.name}-{time.monotonic_ns()}.console"
    proc = subprocess.Popen(
        _args(out, source, verbose, extra),
        env=env,
        stdout=open(path, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc.console = path
    return proc


THIRD_PARTY = ("EngineCore", "Worker pid", "vllm.", "Triton", "NUMA", "prefect.", "WARNING", "Traceback", "[W")


def _left_behind(proc: subprocess.Popen) -> list[str]:
    """Processes of the ended run still alive: its session's members (engine core, workers, Prefect
    server) and its watchdog (in a session of its own)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        session = int(stat[stat.rindex(")") + 2 :].split()[3])
        if session == proc.pid or f"tracefactory.store.watchdog {proc.pid}" in cmd:
            out.append(f"{entry.name}: {cmd[:120]}")
    return out


def _reap(proc: subprocess.Popen, timeout: float = 600) -> int:
    """Wait for the run to end, then for every process it started to end with it (the watchdog's job)."""
    rc = proc.wait(timeout=timeout)
    deadline = time.monotonic() + 30
    while (left := _left_behind(proc)) and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # only a safety net for the next test: `left` is asserted empty
    except ProcessLookupError:
        pass
    assert not left, f"processes of the ended run (rc {rc}) still alive: {left}"
    return rc


def _commits(out: Path) -> list[dict]:
    return io.RunDir(out).generations().commits()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    lines = (Path(__file__).parents[2] / "data" / "demo" / "problems.jsonl").read_text().splitlines()
    path = tmp_path_factory.mktemp("src") / "problems.jsonl"
    path.write_text("\n".join(lines[::6]) + "\n")  # 50 problems, 10 per level
    return path


def test_sigkill_at_any_point_then_resume_matches_an_uninterrupted_run(tmp_path, source):
    whole = tmp_path / "whole"
    proc = _start(whole, source)
    assert _reap(proc) == 0
    # the console shows our lines only; engine and library output is in RUN/logs/
    printed = proc.console.read_text()
    assert "rollout " in printed and "funnel" in printed and "engine and library output" in printed
    assert not [line for line in printed.splitlines() if any(m in line for m in THIRD_PARTY)], printed
    [log] = (whole / "logs").glob("run-*.log")
    assert "EngineCore" in log.read_text()

    crashed = tmp_path / "crashed"
    # 1. SIGKILL from outside, during rollout: as soon as this run has committed its first chunk
    proc = _start(crashed, source)
    deadline = time.time() + 300
    while not _commits(crashed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert _reap(proc) == -signal.SIGKILL
    assert 0 < sum(c["completions"] for c in _commits(crashed)) < 200  # it died mid-rollout
    # 2. SIGKILL mid-rollout again (the third chunk this run commits), 3. during grading, 4. between tables
    for point in ("rollout.chunk_committed:3", "grade.batch", "write.table"):
        proc = _start(crashed, source, point, verbose=point == "grade.batch")
        assert _reap(proc) == -signal.SIGKILL, point
        if point == "grade.batch":  # --verbose: the engine's own output live, no log file of ours
            assert "EngineCore" in proc.console.read_text()
    assert not (crashed / "manifest.json").exists()
    proc = _start(crashed, source)
    assert _reap(proc) == 0
    assert "graded by an earlier run, read back" in proc.console.read_text()  # killed after grading: not regraded

    for table in ("problems", "rollouts", "dataset", "funnel"):
        a, b = pl.read_parquet(whole / table), pl.read_parquet(crashed / table)
        if table == "funnel":
            a, b = a.drop("seconds", "detail"), b.drop("seconds", "detail")
        assert a.equals(b), table
    # completions generated across all the interrupted runs == those of the uninterrupted run
    per_run: dict[str, int] = {}
    for c in _commits(crashed):
        per_run[c["run"]] = per_run.get(c["run"], 0) + c["completions"]
    assert sum(per_run.values()) == sum(c["completions"] for c in _commits(whole)) == 200
    assert len(per_run) >= 3  # the work really was spread over several runs
    gens = pl.read_parquet(list((crashed / "_work" / "generations").glob("chunk-*.parquet")))
    assert len(gens) == 200 and gens.select("problem_id", "sample_index").is_unique().all()

    # then an adaptive budget on both run directories: round 1 (samples 0-3) is read back, round 2 (4-7) generated
    # for the problems still open; SIGKILL inside round 2 (the first chunk this run commits), and the resumed run's
    # tables equal the uninterrupted adaptive run's
    adaptive = {"sampling.budget.policy": "adaptive", "sampling.budget.first": 4, "sampling.budget.max": 8}
    assert _reap(_start(whole, source, extra=adaptive)) == 0
    proc = _start(crashed, source, "rollout.chunk_committed:1", extra=adaptive)
    assert _reap(proc) == -signal.SIGKILL
    assert 200 < sum(c["completions"] for c in _commits(crashed)) < sum(c["completions"] for c in _commits(whole))
    assert _reap(_start(crashed, source, extra=adaptive)) == 0
    for table in ("problems", "rollouts", "dataset", "funnel"):
        a, b = pl.read_parquet(whole / table), pl.read_parquet(crashed / table)
        if table == "funnel":
            a, b = a.drop("seconds", "detail"), b.drop("seconds", "detail")
        assert a.equals(b), table
    problems = pl.read_parquet(whole / "problems")
    assert problems["rounds"].max() == 2 and set(problems["samples_drawn"]) <= {4, 8}
