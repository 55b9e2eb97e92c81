# `make demo` and `make test` create or refresh the local venv themselves (.venv), then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.overhead-installed
EXTRAS ?= build,load,redis,kafka,triton,servers,dali,test

.PHONY: demo test compose-test venv clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Overhead needs Python >= 3.11, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || { echo "creating $(VENV) ..."; $(PYTHON) -m venv $(VENV); }
	@echo "installing Overhead and its dependencies into $(VENV) (first time: about a minute) ..."
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/overhead demo $(ARGS)

test: $(STAMP)
	@bash scripts/ensure_servers.sh $(BIN)/python
	@bash scripts/ensure_browser.sh $(BIN)/python
	@bash scripts/ensure_triton.sh $(BIN)/python
	@bash scripts/ensure_compose.sh
	@bash scripts/ensure_kubectl.sh
	$(BIN)/python -m pytest $(ARGS)
	$(MAKE) compose-test

# The real deploy/docker-compose.yml on a real Docker engine (started here if none answers), with
# images built locally (no registry): scripts/compose_test.sh, docs/deploy.md.
compose-test: $(STAMP)
	@bash scripts/ensure_compose.sh
	bash scripts/compose_test.sh $(BIN)/python $(COMPOSE_ARGS)

clean-venv:
	rm -rf $(VENV)
