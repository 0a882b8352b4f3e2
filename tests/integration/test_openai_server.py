"""The OpenAI-compatible teacher against a real vLLM server on loopback, serving the embedded R1-shaped teacher
(data/teacher) as R1 models are served: with vLLM's `deepseek_r1` reasoning parser (the think block comes
back in `reasoning`)."""

import polars as pl
import pytest

from flows.build_dataset import build_dataset
from tracefactory.backends.openai_teacher import OpenAITeacher
from tracefactory.backends.server import local_server
from tracefactory.backends.vllm_teacher import EMBEDDED_NAME
from tracefactory.config import EMBEDDED_TEACHER, SamplingConfig, TeacherConfig
from tracefactory.training.synth import generate

pytestmark = pytest.mark.server
SERVED = EMBEDDED_NAME  # the in-process name: `teacher` columns compare equal


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("srv") / "server.log"
    # `tracefactory serve`, as the README says
    with local_server(str(EMBEDDED_TEACHER), SERVED, log, via_cli=True, reasoning_parser="deepseek_r1") as url:
        yield url


def _teacher(url, **kw):
    return OpenAITeacher(
        TeacherConfig(kind="openai", base_url=url, model=SERVED, max_concurrency=8, **kw), progress=False
    )


def test_server_completions_match_the_in_process_engine(server, embedded_teacher):
    qs = [[{"role": "user", "content": p.question}] for p in generate(1, seed=5)]
    params, seeds = SamplingConfig(n=4, temperature=0.7, max_tokens=200), [7, 8, 9, 10, 11]
    remote = _teacher(server).generate(qs, 4, params, seeds)
    local = embedded_teacher.generate(qs, 4, params, seeds)
    # the parser's reasoning / content rejoined: the text the engine wrote, its tokens and where </think> was
    assert [[(c.text, c.tokens, c.finish_reason, c.reasoning_tokens) for c in r.completions] for r in remote] == [
        [(c.text, c.tokens, c.finish_reason, c.reasoning_tokens) for c in r.completions] for r in local
    ]
    assert any("</think>" in c.text for r in local for c in r.completions)
    # the server seeds the k-th completion of a request with its seed + k too: a later round's samples
    later = _teacher(server).generate(qs[:2], 2, params, [s + 2 for s in seeds[:2]])
    assert [[c.text for c in r.completions] for r in later] == [[c.text for c in r.completions[2:]] for r in local[:2]]


def test_the_server_splits_what_the_engine_writes_and_plain_completions_are_raw(server, embedded_teacher):
    import httpx

    q = [{"role": "user", "content": generate(1, seed=5)[0].question}]
    params = SamplingConfig(n=1, temperature=0.7, max_tokens=200)
    local = embedded_teacher.generate([q], 1, params, [7])[0].completions[0]
    body = {"model": SERVED, "messages": q, "n": 1, "temperature": 0.7, "max_tokens": 200, "seed": 7}
    message = httpx.post(f"{server}/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]
    reasoning, _, content = local.text.partition("</think>")
    assert (message["reasoning"], message["content"]) == (reasoning, content)  # cut at the tag, nothing stripped
    # /completions has no reasoning fields: the raw text of the rendered prompt, as in-process
    prompt = embedded_teacher.render(q)
    assert prompt.endswith("A: <think>\n")
    raw = _teacher(server).generate([prompt], 1, params, [7])[0].completions[0]
    assert raw.text == embedded_teacher.generate([prompt], 1, params, [7])[0].completions[0].text == local.text
    assert _teacher(server).rendered_prompt(q) == prompt  # the server's template, asked through /tokenize


def test_token_counts_without_token_ids(server):
    qs = [[{"role": "user", "content": generate(1, seed=6)[0].question}]]
    exact = _teacher(server).generate(qs, 1, SamplingConfig(n=1, max_tokens=200), [3])
    approx = _teacher(server, return_token_ids=False).generate(qs, 1, SamplingConfig(n=1, max_tokens=200), [3])
    one, two = exact[0].completions[0], approx[0].completions[0]
    assert one.text == two.text and one.tokens == two.tokens


def test_a_run_through_the_reasoning_parser_equals_the_in_process_run(
    prefect_harness, server, demo_run, r1_subset, tmp_path
):
    """The demo (the R1-shaped teacher; rewriting, the adaptive budget's rounds, Monte-Carlo step scores
    continuing reasoning prefixes) through the server: every table equals the in-process run's, byte for byte."""
    from conftest import R1_OVERRIDES

    run, _ = demo_run
    out = tmp_path / "served"
    overrides = {
        "source.path": str(r1_subset),
        **R1_OVERRIDES,
        "teacher.kind": "openai",
        "teacher.base_url": server,
        "teacher.model": SERVED,
    }
    result = build_dataset(config=None, out=str(out), overrides=overrides)
    data = pl.read_parquet(out / "dataset")
    assert len(data) == result["dataset_rows"] > 0 and (data["teacher"] == SERVED).all()
    for table in ("dataset", "problems"):
        assert pl.read_parquet(out / table).equals(pl.read_parquet(run / table)), table
    served, local = (pl.read_parquet(d / "rollouts").drop("rollout_key") for d in (out, run))
    assert served.equals(local)  # the request keys differ: another teacher identity (a server, not weights)
    assert pl.read_parquet(out / "dataset")["reasoning"].is_not_null().all()
    assert pl.read_parquet(out / "problems")["rounds"].max() > 1  # samples j >= 4 asked with seed + j, as in-process


def test_bad_request_is_a_clear_error(server):
    from tracefactory.errors import BackendError

    teacher = OpenAITeacher(TeacherConfig(kind="openai", base_url=server, model="no-such-model"), progress=False)
    with pytest.raises(BackendError, match="404|400"):
        teacher.generate(["hi"], 1, SamplingConfig(n=1, max_tokens=5), [0])


def test_flow_through_a_faulty_network_loses_nothing(prefect_harness, server, demo_subset, tmp_path):
    """500s, stalls past the request timeout, dropped connections and cut-off bodies between the
    teacher and a real server: retried, and the dataset equals the one over a clean connection."""
    from faultproxy import FaultProxy  # tests/integration/faultproxy.py

    over = {
        "source.path": str(demo_subset),
        "source.limit": 30,
        "teacher.kind": "openai",
        "teacher.model": SERVED,
        "sampling.n": 4,
        "sampling.budget.policy": "fixed",  # one request of 4 per problem, as the timeout below assumes
        "step_score.enabled": False,
        "rewrite.enabled": False,
        "teacher.retries": 4,
        "teacher.retry_backoff_s": 0.05,
        # a request of 4 samples takes ~1 s on a fast CPU, 3-4 s on a slow one (AVX2, ~400 tokens/s) with 4 in flight
        "teacher.request_timeout_s": 10.0,
        "teacher.max_concurrency": 4,
    }
    build_dataset(out=str(tmp_path / "clean"), overrides={**over, "teacher.base_url": server})
    proxy = FaultProxy(server.removesuffix("/v1"), stall_s=20.0)  # past the request timeout
    with proxy as proxied:
        result = build_dataset(out=str(tmp_path / "faulty"), overrides={**over, "teacher.base_url": proxied})
    assert {"500", "drop", "stall", "cut", "ok"} <= set(proxy.faults) and proxy.faults["ok"] >= 30
    assert result["dataset_rows"] > 0
    for table in ("problems", "rollouts", "dataset"):
        assert pl.read_parquet(tmp_path / "clean" / table).equals(pl.read_parquet(tmp_path / "faulty" / table)), table
    funnel = pl.read_parquet(tmp_path / "faulty" / "funnel").filter(pl.col("stage") == "rollout")
    assert funnel["kept"][0] == funnel["rows_in"][0] == 120  # 30 problems x 4, no teacher_error
