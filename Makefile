# Two entry points: `make demo` runs the main job on the bundled dataset, `make test` runs the suite.
# Both create .venv and install ttds into it first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install benchmark lint clean

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	PY=$(PY) bash scripts/install_torch.sh
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Run directory of the demo. A second `make demo` reuses the stages that finished there.
DEMO_DIR ?= outputs/demo

demo: $(STAMP)
	$(PY) train.py experiment=demo paths.run_dir=$(DEMO_DIR)
	$(PY) serve.py run_dir=$(DEMO_DIR) users=all top_k=10 output=$(DEMO_DIR)/recommendations.parquet
	@echo "metrics: $(DEMO_DIR)/evaluate/metrics.md   recommendations: $(DEMO_DIR)/recommendations.parquet"

test: $(STAMP)
	$(PY) -m pytest -q tests

benchmark: $(STAMP)
	$(PY) -m benchmarks.preprocess_yelp
	$(PY) -m ttds.bench dataset=movietweetings_100k 'models=[mostpop,sasrec]' 'seeds=[0,1,2]'

lint: $(STAMP)
	$(VENV)/bin/ruff check ttds tests train.py serve.py

clean:
	rm -rf outputs .cache
