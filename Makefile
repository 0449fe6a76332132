# The README's two commands: `make demo` (install, then embed and index the demo images)
# and `make test` (install, then run the unit tests and the notebooks). CI runs `make test`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make demo` settings; e.g. `make demo WEIGHTS=random` on a machine without network
IMAGES ?= images
ARTIFACTS ?= artifacts
# resnet50, efficientnetv2b0, convnext_tiny, vit_b16, tflite, keras:… (`python -m imagesearch build --help`)
BACKBONE ?= resnet50
WEIGHTS ?= imagenet
# What computes the backbone: auto (the fastest runtime on this CPU that matches tensorflow), tensorflow, litert, …
RUNTIME ?= auto
# The pretrained model that sits beside the project on our machines (see README: offline weights)
SHARED_MODEL ?= ../shared/models/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite

.PHONY: install browser demo test lab serve notebooks figure benchmarks clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Debian's chromium, which tests/test_browser.py drives through Playwright (Playwright never downloads a browser here).
CHROMIUM := /usr/bin/chromium

browser:  ## Chromium for the browser tests: installed with apt-get when we are root, else they are skipped
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the browser tests (apt-get)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "apt-get could not install chromium: the browser tests will be skipped"; \
	else \
		echo "No $(CHROMIUM): the browser tests will be skipped (install it: sudo apt-get install -y chromium)"; \
	fi

demo: install  ## embed the images, build the index, check it, draw example queries
	$(BIN)/python -m imagesearch build --images $(IMAGES) --artifacts $(ARTIFACTS) \
		--backbone $(BACKBONE) --weights $(WEIGHTS) --runtime $(RUNTIME)

test: install browser  ## unit tests, the notebooks end to end (nbval) and in a browser (JupyterLab), offline
	$(BIN)/python -m pytest

# The notebooks run in notebooks/: a weights file is passed as an absolute path, imagenet and random as they are.
LAB_WEIGHTS = $(if $(filter imagenet random,$(WEIGHTS)),$(WEIGHTS),$(abspath $(WEIGHTS)))
# JupyterLab refuses to run as root unless told to; root is how notebooks run in most containers.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: install  ## open the notebooks in JupyterLab, with the same settings as `make demo` (IMAGES, ARTIFACTS, WEIGHTS…)
	IMAGESEARCH_IMAGES="$(abspath $(IMAGES))" IMAGESEARCH_ARTIFACTS="$(abspath $(ARTIFACTS))" \
	IMAGESEARCH_BACKBONE="$(BACKBONE)" IMAGESEARCH_WEIGHTS="$(LAB_WEIGHTS)" IMAGESEARCH_RUNTIME="$(RUNTIME)" \
		$(BIN)/jupyter lab $(ALLOW_ROOT) notebooks/

# `make serve` settings: where it listens (127.0.0.1: this machine only, unless you say otherwise)
HOST ?= 127.0.0.1
PORT ?= 8000

# What `make demo` needs to be told to fill the folder `make serve` was given (nothing for the default one)
DEMO_ARTIFACTS = $(if $(filter-out artifacts,$(ARTIFACTS)), ARTIFACTS=$(ARTIFACTS))

# The service embeds queries with the model the index names (backbone and weights): only the runtime is chosen here.
serve: install  ## the search service on http://$(HOST):$(PORT)/ over `make demo`'s artifacts (API docs: /docs)
	@test -f "$(ARTIFACTS)/index/index.json" || { echo "No index in $(ARTIFACTS)/ to serve: run \`make demo$(DEMO_ARTIFACTS)\` \
	first, or pass ARTIFACTS=folder" >&2; exit 2; }
	IMAGESEARCH_ARTIFACTS="$(abspath $(ARTIFACTS))" IMAGESEARCH_RUNTIME="$(RUNTIME)" \
		$(BIN)/uvicorn imagesearch.service:app --host $(HOST) --port $(PORT)

notebooks: install  ## re-run the notebooks and store their outputs as nbval's expected results
	$(BIN)/python tests/refresh_notebooks.py

# Queries: the first photo of every third Caltech category (camera, hedgehog, pigeon, saxophone), not hand-picked.
FIGURE_QUERIES = $(foreach kind,camera hedgehog pigeon saxophone,--example caltech101/$(kind)/image_0001.jpg)

figure: install  ## redraw the README's picture with the shared pretrained MobileNet, on the demo images
	$(BIN)/python -m imagesearch build --backbone tflite --weights $(SHARED_MODEL) \
		--artifacts $(ARTIFACTS)/figure -k 5 $(FIGURE_QUERIES)
	cp $(ARTIFACTS)/figure/example_queries.jpg docs/example_results.jpg

benchmarks: install  ## every benchmark at the sizes the README quotes (about 2 hours: the 1M index benchmark is most)
	$(BIN)/python benchmarks/extraction.py --count 448 --batch-size 32
	$(BIN)/python benchmarks/ray_extraction.py --count 448 --batch-size 32
	$(BIN)/python benchmarks/backbones.py --count 208 --repeats 3
	$(BIN)/python benchmarks/incremental.py --count 10000
	$(BIN)/python benchmarks/memory.py --counts 2000 20000
	$(BIN)/python benchmarks/query_latency.py --sizes 10000 100000
	$(BIN)/python benchmarks/collection_scale.py --scan-count 1000000
	$(BIN)/python benchmarks/realism.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/ann_update.py
	$(BIN)/python benchmarks/ann_scale.py --sizes 100000,1000000

clean:
	rm -rf $(ARTIFACTS)
