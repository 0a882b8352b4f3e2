import json

from typer.testing import CliRunner

from tracefactory.cli import app

runner = CliRunner()


def test_bad_config_fails_fast_with_the_field_named(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("source: {path: x.jsonl}\nsampling: {n: 0}\n")
    result = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "sampling.n" in result.output and "> 0" in result.output
    assert not (tmp_path / "run").exists()  # nothing started


def test_bad_override_fails_fast(tmp_path):
    result = runner.invoke(app, ["run", "--set", "teacher.kind=tgi", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "teacher.kind" in result.output and "'openai'" in result.output


def test_task_runner_option_is_validated_before_anything_starts(tmp_path):
    result = runner.invoke(app, ["run", "--task-runner", "slurm", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "run.task_runner" in result.output and "'ray'" in result.output
    assert not (tmp_path / "run").exists()


def test_help_lists_the_verbs():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "run" in result.output and "query" in result.output


def test_query_json_and_errors(tmp_path):
    import polars as pl

    (tmp_path / "dataset").mkdir()
    pl.DataFrame({"difficulty": ["easy", "easy", "hard"]}).write_parquet(tmp_path / "dataset" / "part-0.parquet")
    result = runner.invoke(
        app,
        [
            "query",
            str(tmp_path),
            "SELECT difficulty, count(*) AS n FROM dataset GROUP BY difficulty ORDER BY n DESC",
            "--json",
        ],
    )
    assert result.exit_code == 0
    assert [json.loads(x) for x in result.output.splitlines()] == [
        {"difficulty": "easy", "n": 2},
        {"difficulty": "hard", "n": 1},
    ]
    bad = runner.invoke(app, ["query", str(tmp_path), "SELECT * FROM nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
    missing = runner.invoke(app, ["query", str(tmp_path / "empty"), "SELECT 1"])
    assert missing.exit_code == 2 and "RUN_DIR" in missing.output


def test_query_cannot_write_run_files_or_read_outside_the_run(tmp_path):
    import polars as pl

    (tmp_path / "run" / "dataset").mkdir(parents=True)
    part = tmp_path / "run" / "dataset" / "part-0.parquet"
    pl.DataFrame({"a": [1, 2]}).write_parquet(part)
    before = part.read_bytes()
    (tmp_path / "secret.txt").write_text("do not read me")
    attempts = {
        f"COPY (SELECT 9 AS a) TO '{part}' (FORMAT parquet)": "read-only SQL",
        "CREATE TABLE t AS SELECT 1": "read-only SQL",
        "SET enable_external_access = true": "read-only SQL",
        "SELECT 1; DROP VIEW dataset": "read-only SQL",
        f"SELECT * FROM read_text('{tmp_path / 'secret.txt'}')": "Permission",
        "SELECT * FROM read_csv('/etc/passwd')": "Permission",
    }
    for sql, why in attempts.items():
        result = runner.invoke(app, ["query", str(tmp_path / "run"), sql])
        assert result.exit_code == 2 and why in result.output, (sql, result.output)
    assert part.read_bytes() == before
    ok = runner.invoke(
        app, ["query", str(tmp_path / "run"), "WITH x AS (SELECT sum(a) AS s FROM dataset) SELECT * FROM x"]
    )
    assert ok.exit_code == 0 and "3" in ok.output


def test_a_teacher_that_cannot_be_loaded_is_one_clear_line(tmp_path, monkeypatch):
    """The GPU recipe here: its model is not on disk and the hub (a closed port) cannot be reached."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = runner.invoke(app, ["run", "configs/gsm8k-r1-distill.yaml", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert text.startswith("error: teacher.model 'deepseek-ai/DeepSeek-R1-Distill-Qwen-7B' is not on disk")
    assert "cannot be reached" in text and "hf download deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" in text
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
    missing = runner.invoke(app, ["run", "--set", "teacher.model=./no/such/folder", "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "not a model folder" in missing.output


def test_serve_help_names_the_cpu_settings():
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "chunked" in result.output and "--kv-cache-gib" in result.output


QUIET = """
import subprocess, sys, logging
from pathlib import Path
from tracefactory import console
console.setup_logging(verbose=False)
with console.quiet(Path(sys.argv[1])):
    chatter = "import sys; print('engine chatter'); print('WARNING torch', file=sys.stderr)"
    subprocess.run([sys.executable, "-c", chatter])
    print("library print")
    logging.getLogger("vllm.x").warning("third-party warning")
    logging.getLogger("tracefactory.stage").info("our stage line")
    console.out().write("our table\\n")
print("after")
"""


def test_quiet_console_keeps_our_lines_and_sends_the_rest_to_the_log(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "logs" / "run.log"
    done = subprocess.run([sys.executable, "-c", QUIET, str(log)], capture_output=True, text=True, check=True)
    assert done.stdout == "our table\nafter\n"
    assert done.stderr.strip().endswith("our stage line") and len(done.stderr.strip().splitlines()) == 1
    logged = log.read_text()
    for line in ("engine chatter", "WARNING torch", "library print", "third-party warning", "our stage line"):
        assert line in logged, line


HOLD_LOCK = """
import sys, time
from tracefactory.store.io import RunDir
with RunDir(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_the_same_directory_fails_at_once_and_a_dead_holder_does_not_block(tmp_path):
    import subprocess
    import sys

    from tracefactory.store.io import RunDir

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = runner.invoke(app, ["run", "--out", str(out)])
        assert result.exit_code == 2
        text = " ".join(result.output.split())
        assert "is in use by pid" in text and str(holder.pid) in text and "another --out" in text
    finally:
        holder.kill()  # as SIGKILL would: no cleanup; the kernel drops its lock
        holder.wait()
    with RunDir(out).lock():  # free again
        with RunDir(out).lock():  # and re-entrant within a process
            pass


def test_query_formats_several_runs_and_readable_numbers(tmp_path):
    import polars as pl

    for name, rates in (("a", [0.9245190620422363, 0.5]), ("b", [0.125])):
        (tmp_path / name / "problems").mkdir(parents=True)
        pl.DataFrame({"pass_rate": rates, "n": [12345] * len(rates)}).write_parquet(
            tmp_path / name / "problems" / "part-0.parquet"
        )
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    sql = (
        "SELECT run, count(*) AS problems, avg(pass_rate) AS mean, max(n) AS n FROM problems GROUP BY run ORDER BY run"
    )
    table = runner.invoke(app, ["query", *runs, sql])
    assert table.exit_code == 0 and "0.712" in table.output and "12,345" in table.output
    assert "0.7122595310211182" not in table.output  # readable, not every digit
    csv = runner.invoke(app, ["query", *runs, sql, "--format", "csv"])
    assert csv.output.splitlines() == ["run,problems,mean,n", "a,2,0.7122595310211182,12345", "b,1,0.125,12345"]
    out = tmp_path / "result.parquet"
    wrote = runner.invoke(app, ["query", *runs, sql, "--format", "parquet", "--output", str(out)])
    assert wrote.exit_code == 0 and pl.read_parquet(out)["run"].to_list() == ["a", "b"]
    lines = runner.invoke(app, ["query", runs[0], "SELECT pass_rate FROM problems ORDER BY 1", "-f", "json"])
    assert [json.loads(x)["pass_rate"] for x in lines.output.splitlines()] == [0.5, 0.9245190620422363]
    # one run: no run column
    single = runner.invoke(app, ["query", runs[0], "SELECT * FROM problems", "-f", "csv"])
    assert single.output.splitlines()[0] == "pass_rate,n"
    for args, why in (
        (["query", runs[0], "SELECT 1", "-f", "parquet"], "--output"),
        (["query", runs[0], "SELECT 1", "-f", "xml"], "--format"),
        (["query", "SELECT 1"], "run directories"),
    ):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2 and why in bad.output, (args, bad.output)
