"""The OpenAI-compatible teacher against a real vLLM server on loopback, serving the embedded R1-shaped teacher
(data/teacher) as R1 models are served: with vLLM's `deepseek_r1` reasoning parser (the think block comes
back in `reasoning`)."""

import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.build_dataset import build_dataset
from tracefactory.backends.openai_teacher import OpenAITeacher
from tracefactory.backends.prompts import build_prompt
from tracefactory.backends.server import local_server
from tracefactory.backends.vllm_teacher import EMBEDDED_NAME
from tracefactory.config import EMBEDDED_TEACHER, SamplingConfig, TeacherConfig, load_config
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


def _choices(answer: bytes) -> list:
    """What a server's answer says, without its request id, timestamps and usage."""
    return json.loads(answer)["choices"]


def test_flow_through_a_faulty_network_loses_nothing(prefect_harness, server, demo_subset, tmp_path):
    """500s, stalls past the request timeout, dropped connections and cut-off bodies between the teacher and a real
    server: every request is retried until answered, what is stored is what the server answered, and the tables
    equal the ones over a clean connection wherever the server answered both runs alike.

    vLLM on CPU is not batch-invariant: a request decoded beside others can, rarely, sample another token than
    one decoded alone (measured here: 1 completion of 120 when the same requests went one at a time instead of
    four at a time), and the faults change which requests the server decodes together."""
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
    upstream = server.removesuffix("/v1")
    clean, faulty = FaultProxy(upstream, plans=[()]), FaultProxy(upstream, stall_s=20.0)  # stalls past the timeout
    for proxy, name in ((clean, "clean"), (faulty, "faulty")):
        with proxy as proxied:
            result = build_dataset(out=str(tmp_path / name), overrides={**over, "teacher.base_url": proxied})
    assert set(clean.faults) == {"ok"}
    assert {"500", "drop", "stall", "cut", "ok"} <= set(faulty.faults) and faulty.faults["ok"] >= 30
    assert result["dataset_rows"] > 0
    assert set(clean.answers) <= set(faulty.answers)  # every request of the clean run was made and answered

    # stored = received: each problem's rollouts are the completions of one whole answer the server gave
    prompt = load_config(None, {**over, "teacher.base_url": server}).prompt
    questions = dict(pl.read_parquet(tmp_path / "clean" / "problems").select("problem_id", "question").iter_rows())
    main = {json.dumps(build_prompt(q, prompt)): pid for pid, q in questions.items()}
    requests = {body: json.loads(body) for body in faulty.answers}  # completions, and the /tokenize calls
    asked = {body: r["messages"] for body, r in requests.items() if "seed" in r}
    of = {body: main[json.dumps(m)] for body, m in asked.items() if json.dumps(m) in main}  # not the hinted ones
    assert sorted(of.values()) == sorted(questions)
    rollouts = pl.read_parquet(tmp_path / "faulty" / "rollouts").sort("problem_id", "sample_index")
    parse = _teacher(server)._parse
    for body, pid in of.items():
        stored = rollouts.filter(pl.col("problem_id") == pid)["text"].to_list()
        assert stored in [[c.text for c in parse(json.loads(a))] for a in faulty.answers[body]], pid

    # the same tables wherever the server answered both runs alike
    def alike(body: bytes) -> bool:
        return len({json.dumps(_choices(a)) for a in faulty.answers[body] + clean.answers.get(body, [])}) == 1

    moved = [message["content"] for body, m in asked.items() if not alike(body) for message in m]
    changed = sorted(pid for pid, q in questions.items() if any(q in content for content in moved))
    print(f"problems the server answered differently in the two runs: {changed or 'none'}")
    assert changed or set(faulty.answers) == set(clean.answers)
    for table in ("problems", "rollouts", "dataset"):  # assert_frame_equal names the column and rows that differ
        clean_rows, faulty_rows = (
            pl.read_parquet(tmp_path / run / table).filter(~pl.col("problem_id").is_in(changed))
            for run in ("clean", "faulty")
        )
        if changed and table == "dataset":  # the ranks count the changed problems' rows too
            clean_rows, faulty_rows = clean_rows.drop("curriculum_rank"), faulty_rows.drop("curriculum_rank")
        assert_frame_equal(clean_rows, faulty_rows)
    funnel = pl.read_parquet(tmp_path / "faulty" / "funnel").filter(pl.col("stage") == "rollout")
    assert funnel["kept"][0] == funnel["rows_in"][0] == 120  # 30 problems x 4, no teacher_error
