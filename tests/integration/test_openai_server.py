"""The OpenAI-compatible teacher against a real vLLM server of the embedded teacher on loopback."""

import polars as pl
import pytest

from flows.build_dataset import build_dataset
from tracefactory.backends.openai_teacher import OpenAITeacher
from tracefactory.backends.server import local_server
from tracefactory.config import EMBEDDED_TEACHER, SamplingConfig, TeacherConfig
from tracefactory.synth import generate

pytestmark = pytest.mark.server
SERVED = "arith-tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("srv") / "server.log"
    with local_server(
        str(EMBEDDED_TEACHER), SERVED, log, via_cli=True
    ) as url:  # `tracefactory serve`, as the README says
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
    assert [[(c.text, c.tokens, c.finish_reason) for c in r.completions] for r in remote] == [
        [(c.text, c.tokens, c.finish_reason) for c in r.completions] for r in local
    ]


def test_token_counts_without_token_ids(server):
    qs = [[{"role": "user", "content": generate(1, seed=6)[0].question}]]
    exact = _teacher(server).generate(qs, 1, SamplingConfig(n=1, max_tokens=200), [3])
    approx = _teacher(server, return_token_ids=False).generate(qs, 1, SamplingConfig(n=1, max_tokens=200), [3])
    one, two = exact[0].completions[0], approx[0].completions[0]
    assert one.text == two.text and one.tokens == two.tokens


def test_flow_through_the_server(prefect_harness, server, demo_subset, tmp_path):
    out = tmp_path / "run"
    overrides = {
        "source.path": str(demo_subset),
        "teacher.kind": "openai",
        "teacher.base_url": server,
        "teacher.model": SERVED,
        "sampling.n": 4,
        "rewrite.enabled": False,
    }
    result = build_dataset(config=None, out=str(out), overrides=overrides)
    data = pl.read_parquet(out / "dataset")
    assert len(data) == result["dataset_rows"] > 0 and (data["teacher"] == SERVED).all()


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
        "step_score.enabled": False,
        "rewrite.enabled": False,
        "teacher.retries": 4,
        "teacher.retry_backoff_s": 0.05,
        "teacher.request_timeout_s": 4.0,
        "teacher.max_concurrency": 8,
    }
    build_dataset(out=str(tmp_path / "clean"), overrides={**over, "teacher.base_url": server})
    proxy = FaultProxy(server.removesuffix("/v1"), stall_s=8.0)
    with proxy as proxied:
        result = build_dataset(out=str(tmp_path / "faulty"), overrides={**over, "teacher.base_url": proxied})
    assert {"500", "drop", "stall", "cut", "ok"} <= set(proxy.faults) and proxy.faults["ok"] >= 30
    assert result["dataset_rows"] > 0
    for table in ("problems", "rollouts", "dataset"):
        assert pl.read_parquet(tmp_path / "clean" / table).equals(pl.read_parquet(tmp_path / "faulty" / table)), table
    funnel = pl.read_parquet(tmp_path / "faulty" / "funnel").filter(pl.col("stage") == "rollout")
    assert funnel["kept"][0] == funnel["rows_in"][0] == 120  # 30 problems x 4, no teacher_error
