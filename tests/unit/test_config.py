import dataclasses

import pytest

from tracefactory.config import DEMO_CONFIG, FactoryConfig, SourceConfig, build, load_config
from tracefactory.errors import ConfigError


def test_demo_config_loads_and_resolves_paths():
    cfg = load_config()
    assert cfg.name == "demo" and cfg.teacher.kind == "vllm" and cfg.sampling.n == 8
    assert cfg.source.path.endswith("data/demo/problems.jsonl")


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BAD = [
    # (yaml, field named in the message, fragment of what is allowed)
    ("source: {path: x.jsonl}\nteacher: {kind: tgi}", "teacher.kind", "'vllm', 'openai'"),
    ("source: {path: x.jsonl}\nsampling: {n: 0}", "sampling.n", "> 0"),
    ("source: {path: x.jsonl}\nsampling: {n: eight}", "sampling.n", "type int"),
    ("source: {path: x.jsonl}\nsampling: {top_p: 1.5}", "sampling.top_p", "(0, 1]"),
    ("source: {path: x.jsonl}\nsampling: {temprature: 0.5}", "sampling.temprature", "temperature"),
    ("source: {path: x.jsonl, gold_format: latex}", "source.gold_format", "'gsm8k'"),
    ("source: {path: x.jsonl}\nteacher: {kind: openai}", "teacher.base_url", "OpenAI-compatible URL"),
    ("source: {path: x.jsonl}\nprompt: {template: 'Solve it'}", "prompt.template", "{question}"),
    ("source: {path: x.jsonl}\ndifficulty: {buckets: [[easy, 0.2], [hard, 0.5]]}", "difficulty.buckets", "descending"),
    ("teacher: {kind: vllm}", "<top level>", "required keys"),
    ("source: {path: ''}", "source.path", "JSONL/Parquet path"),
    ("- just\n- a list", "<top level>", "mapping"),
    ("source: {path: x.jsonl}\nselect: {keep: true}", "select.keep", "type int"),
    ("source: {path: x.jsonl}\nrun: {ray_actor_resources: teacher_node}", "run.ray_actor_resources", "a mapping"),
    ("source: {path: x.jsonl}\nrun: {ray_actor_resources: {gpu_node: 0}}", "run.ray_actor_resources.gpu_node", "> 0"),
    ("source: {path: x.jsonl}\nrun: {ray_actor_resources: {gpu: all}}", "run.ray_actor_resources.gpu", "float"),
]


def test_a_mapping_field_takes_a_mapping(tmp_path):
    cfg = load_config(_write(tmp_path, "source: {path: x.jsonl}\nrun: {ray_actor_resources: {teacher_node: 1}}"))
    assert cfg.run.ray_actor_resources == {"teacher_node": 1.0}
    assert load_config(_write(tmp_path, "source: {path: x.jsonl}")).run.ray_actor_resources == {}


@pytest.mark.parametrize("text,field,allowed", BAD)
def test_bad_config_names_field_and_allowed_values(tmp_path, text, field, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert err.value.field == field
    assert allowed in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="existing YAML file"):
        load_config("/nonexistent/config.yaml")


def test_overrides_are_validated_too():
    assert load_config(DEMO_CONFIG, {"sampling.n": 4}).sampling.n == 4
    with pytest.raises(ConfigError, match="sampling.n"):
        load_config(DEMO_CONFIG, {"sampling.n": -1})


def test_rollout_hash_ignores_selection_and_thresholds():
    a = load_config()
    b = load_config(None, {"select.keep": 3, "grade.timeout_s": 9, "difficulty.buckets": [["a", 0.5], ["b", 0.0]]})
    c = load_config(None, {"sampling.temperature": 1.0})
    assert a.rollout_hash() == b.rollout_hash() != c.rollout_hash()
    assert a.hash() != b.hash()


def test_configs_are_frozen_and_hashable():
    cfg = build(FactoryConfig, {"source": {"path": "x.jsonl"}})
    assert isinstance(cfg.source, SourceConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"
    assert hash(cfg) == hash(build(FactoryConfig, {"source": {"path": "x.jsonl"}}))
