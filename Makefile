# `make test` and `make demo` install everything a fresh Debian 12 machine needs, then run.
# Both are idempotent: a second run installs nothing new.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# prometheus: test_metrics scrapes a lab with it; vagrant: test_deploy runs `vagrant validate`;
# docker.io: the reference engine `moor build` is compared with (tests/dockerref.py).
APT_PACKAGES := etcd-server etcd-client busybox-static iproute2 nftables python3-venv docker-registry runc prometheus vagrant docker.io
STAMP_APT := $(VENV)/.apt-stamp
STAMP_PY  := $(VENV)/.py-stamp

.PHONY: test demo install proto lint bench clean

install: $(STAMP_APT) $(STAMP_PY)

$(STAMP_APT): Makefile
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP_PY): pyproject.toml | $(STAMP_APT)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# Bytecode up front, even where PYTHONDONTWRITEBYTECODE is set: every `moor` starts faster.
	@$(PY) -m compileall -q moorage controlplane nodeagent builder > /dev/null
	@touch $@

# The linter runs first: it also enforces the layout's rules (etcd only through controlplane/store).
test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

demo: install
	$(PY) -m moorage.demo

proto: install
	$(PY) -m moorage.protogen

lint: install
	$(VENV)/bin/ruff check .

# The benchmarks' peers: Docker Swarm and docker build/push (Debian's docker.io), runc, node_exporter (metrics scrape
# cost), fio (volume I/O against the host directory); tests need none of them.
BENCH_APT_PACKAGES := docker.io iperf3 prometheus-node-exporter fio

bench: install
	@missing=""; for p in $(BENCH_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
