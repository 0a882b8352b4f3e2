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
