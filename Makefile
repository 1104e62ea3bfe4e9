# `make demo`: venv + install + demo data + tiny CPU fit + sampled mp4 + TensorBoard logs.
# `make test`: venv + install + the test suite without the multi-process `slow` tests (about 4 minutes on 2 cores);
# `make test-slow`: those (2-process ZeRO / FSDP2 / sequence-parallel runs, kill-and-resume). .ci/run runs both.
VENV ?= .venv
PY := $(VENV)/bin/python
ULTRAGEN := $(VENV)/bin/ultragen
export HF_HUB_OFFLINE := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions

.PHONY: install test test-slow demo demo-strip ablation clean

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

demo: install
	$(ULTRAGEN) data demo
	$(ULTRAGEN) fit -c configs/demo.yaml
	$(ULTRAGEN) predict -c configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt --data.init_args.prompts data/demo_prompts.txt
	@echo "TensorBoard logs: runs/demo  (tensorboard --logdir runs)"
	@echo "Sampled videos:   runs/demo/samples/*.mp4, frame strip of the scored prompts: runs/demo/samples/strip.png"

# The README's frame strip: a fresh demo run's strip of its 16 scored held-out prompts.
demo-strip: demo
	cp runs/demo/samples/strip.png docs/demo_strip.png

# docs/ablation.md and docs/ablation/ from the default ablation run (about 32 minutes on 2 CPU cores).
ablation: install
	$(ULTRAGEN) ablate

clean:
	rm -rf runs .pytest_cache
