# minillm: every target does its own set-up on a fresh clone.
PY ?= python3
# PIP_ROOT_USER_ACTION: as root (a container, CI) pip would warn on every install that root
# should use a virtual environment; here the interpreter to build for is the caller's choice.
PIP = PIP_ROOT_USER_ACTION=ignore $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup build test bench bench-gemm bench-train demo data clean

# Build tools and test runner (the reference libraries for comparison tests come from `make dev`).
.setup-stamp: pyproject.toml
	$(PIP) "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.24" pytest pytest-benchmark
	@touch $@
setup: .setup-stamp

# In-place build of the extensions; flock keeps parallel builds in one tree from racing.
build: .setup-stamp
	flock .build.lock $(PY) setup.py -q build_clib build_ext --inplace -j 2

# Reference libraries the comparison tests use (torch is pinned: the CPU build on local disk),
# and the serve stack with the clients its tests drive (openai; selenium for the chat page,
# which also needs chromium and chromedriver from the OS: apt-get install chromium chromium-driver).
dev: .setup-stamp
	$(PIP) safetensors tokenizers tiktoken threadpoolctl tqdm "torch==2.13.0" transformers "jinja2>=3.1.6"
	$(PIP) "starlette==1.10.0" "uvicorn==0.55.0" "openai==3.63.0" "selenium==4.38.0"

test: build
	$(PY) -m pytest tests -q

bench: build
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
		$(PY) -m pytest bench -q --benchmark-columns=median,iqr,ops --benchmark-sort=name

bench-gemm: build
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
		$(PY) bench/bench_gemm.py

# One GPT training step vs PyTorch eager (gpt-tiny, gpt-mini; MINILLM_BENCH_GPT2=1 adds GPT-2 small).
bench-train: build
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 \
		$(PY) bench/bench_train_gpt.py

# The default corpus (Shakespeare) into data/shakespeare/ ($MINILLM_DATA_DIR if set).
data: build
	$(PY) -m minillm data shakespeare

# The README's main job: the corpus, a 2048-id BPE tokenizer, token files, about 5 minutes of
# gpt-mini with the small-model recipe on all cores, then validation bits per byte and a sample
# (configs/shakespeare-gpt-mini.json).
DEMO_DATA = data/shakespeare
DEMO_VOCAB = 2048
DEMO_RUN = runs/shakespeare-gpt-mini
DEMO_ARGS ?=
demo: build
	$(PY) -m minillm data shakespeare --data-dir data
	test -f $(DEMO_DATA)/tokenizer-$(DEMO_VOCAB)/tokenizer.json || $(PY) -m minillm tokenizer train \
		--input $(DEMO_DATA)/train.txt --vocab-size $(DEMO_VOCAB) --out $(DEMO_DATA)/tokenizer-$(DEMO_VOCAB) --quiet
	$(PY) -m minillm data prepare --input $(DEMO_DATA)/train.txt --val-input $(DEMO_DATA)/val.txt \
		--tokenizer $(DEMO_DATA)/tokenizer-$(DEMO_VOCAB) --out $(DEMO_DATA)/tokens-$(DEMO_VOCAB) --quiet
	rm -rf $(DEMO_RUN)
	$(PY) -m minillm train --config configs/shakespeare-gpt-mini.json --out-dir $(DEMO_RUN) $(DEMO_ARGS)

clean:
	rm -rf build *.egg-info minillm/*.so pyx/*.c .setup-stamp .build.lock
