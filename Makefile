# The two commands a user needs: `make run` and `make test`. Everything else
# is for developers. Both create .venv and install zwal into it first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
PYTEST_ARGS ?=
# Test processes (pytest-xdist): the tests pick their own ports, directories and namespaces, and
# most of their time is spent waiting on real processes and fsync, so two workers halve the suite.
PYTEST_JOBS ?= 2

.PHONY: setup sysdeps run stop demo check test simulate mutants soak bench bench-bulk bench-reads bench-setup bench-engine bench-quick bench-profile clean help

help:
	@echo "make run    - set up .venv and start a local 3-node cluster under supervisord (in var/)"
	@echo "make stop   - stop the local cluster"
	@echo "make test   - set up .venv and run the whole test suite (after make check)"
	@echo "make check  - ruff and mypy (configured in pyproject.toml), under a minute"
	@echo "make simulate [SEEDS=1000] - the deterministic cluster simulator over SEEDS random seeds (tests/sim/)"
	@echo "               [FAULTS=rebuild,damage,lying,churn,promotes|all] [LIVENESS=operator|self]: issue 19's faults"
	@echo "make mutants [MUTANTS_JOBS=1] [MUTANTS_ARGS='--only ID']"
	@echo "             - mutation testing: every mutant in tests/mutants/catalogue_*.py must be killed (not in make test)"
	@echo "make bench  - zwal (1 and 3 nodes) beside the disk's fsync floor, Redis, SQLite, etcd and pysyncobj"
	@echo "               (installs the peers with apt-get when missing: needs root; report in bench/results/)"
	@echo "make bench-quick   - a shorter one (under 2 minutes)"
	@echo "make bench-profile - where a zwal leader's time goes under 64 clients (py-spy)"
	@echo "make bench-engine  - engine benchmark against the disk's fsync floor"
	@echo "make bench-reads   - what a ReadIndex get costs: 3 nodes, K=1 vs K=0, at 1 and 64 clients"
	@echo "make bench-bulk    - the batch op (Client.set_many) on 1 and 3 nodes beside redis-benchmark -P 16"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The tools the real-fault tests use (strace, ip, losetup, mkfs.ext4): installed
# with apt-get when missing and running as root (CI); otherwise those tests skip
# and say why.
SYSTEM_TOOLS := strace ip losetup mkfs.ext4 setpriv
sysdeps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing the fault-test tools:$$missing"; \
			apt-get update -qq && apt-get install -y -qq strace iproute2 util-linux e2fsprogs >/dev/null; \
		else \
			echo "note: missing$$missing (not root or no apt-get): the tests that need them will skip"; \
		fi; \
	fi
	@# etcd 3.4 (Debian's etcd-server) for the automatic-failover tests (docs/failover.md). The tests start
	@# their own members on their own ports: the package's service is kept from starting (policy-rc.d).
	@if ! command -v etcd >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing etcd (etcd-server, etcd-client) for the failover tests"; \
			had=0; [ -e /usr/sbin/policy-rc.d ] && had=1; \
			[ $$had = 1 ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
			(apt-get install -y -qq etcd-server etcd-client >/dev/null 2>&1 || \
			 (apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null)); rc=$$?; \
			[ $$had = 1 ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; \
		else \
			echo "note: etcd missing (not root or no apt-get): the automatic-failover tests will skip"; \
		fi; \
	fi
	@# promtool (Debian's prometheus) checks deploy/prometheus/zwal-alerts.yml; its service is kept from starting too.
	@if ! command -v promtool >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing promtool (prometheus) for the alert-rule test"; \
		had=0; [ -e /usr/sbin/policy-rc.d ] && had=1; \
		[ $$had = 1 ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; rc=$$?; \
		[ $$had = 1 ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

# A local 3-node cluster (1 leader, 2 followers, ack_replicas = 1) under supervisord, in var/.
run: setup
	@test -f var/cluster.toml || $(BIN)/zwal cluster init var --nodes 3
	@if $(BIN)/supervisorctl -c var/supervisord.conf pid >/dev/null 2>&1; then \
		echo "supervisord is already running for var/"; \
	else \
		$(BIN)/supervisord -c var/supervisord.conf && echo "started supervisord (logs in var/log/)"; \
	fi
	@$(BIN)/zwal status --config var/cluster.toml --wait 30
	@echo
	@echo "The cluster is up. Try:"
	@echo "  $(BIN)/zwal set hello world --config var/cluster.toml"
	@echo "  $(BIN)/zwal get hello --config var/cluster.toml"
	@echo "  $(BIN)/zwal status --config var/cluster.toml"
	@echo "  $(BIN)/zwal drill --config var/cluster.toml --rounds 3"
	@echo "  $(BIN)/supervisorctl -c var/supervisord.conf status"
	@echo "Stop it with: make stop"

stop:
	@if [ -f var/supervisord.conf ] && $(BIN)/supervisorctl -c var/supervisord.conf pid >/dev/null 2>&1; then \
		$(BIN)/supervisorctl -c var/supervisord.conf shutdown; \
	else \
		echo "no cluster running in var/"; \
	fi

demo: setup
	@mkdir -p var
	$(BIN)/zwal demo --path var/demo.wal

# Lint and type-check (pyproject.toml's [tool.ruff] and [tool.mypy]); `make test`
# runs it first, so CI (.ci/run) fails on a finding before the suite starts.
check: setup
	$(BIN)/ruff check daemon follower zwal tests bench
	$(BIN)/mypy

test: setup sysdeps check
	$(BIN)/python -m pytest -n $(PYTEST_JOBS) $(PYTEST_ARGS)

# Deterministic simulation (tests/sim/): a failing seed prints its trace; replay it with
# cd tests && ../.venv/bin/python -m sim.run --seed N --trace
SEEDS ?= 1000
FAULTS ?=
LIVENESS ?=
simulate: setup
	cd tests && ../$(BIN)/python -m sim.run --seeds $(SEEDS) $(if $(FAULTS),--faults $(FAULTS)) $(if $(LIVENESS),--liveness $(LIVENESS))

# Mutation testing (tests/mutants/): each mutant applied alone to a private copy of the tree;
# exits non-zero if one survives or is stale. Report in tests/mutants/last-report.txt.
MUTANTS_JOBS ?= 1
MUTANTS_ARGS ?=
mutants: setup
	$(BIN)/python -m tests.mutants.run --jobs $(MUTANTS_JOBS) $(MUTANTS_ARGS)

# Real faults at random on a scratch cluster (kill, pause, partition, disk; root for the last two):
# stops at the first violation and prints how to rerun it.
MINUTES ?= 10
soak: setup
	$(BIN)/zwal drill --soak $(MINUTES) --seconds 2

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	bash bench/setup_peers.sh
	touch $(BENCH_STAMP)

bench-setup: $(BENCH_STAMP)

bench-engine: setup
	$(BIN)/python bench/engine.py

bench-reads: setup
	$(BIN)/python bench/reads.py

BULK_ARGS ?=
bench-bulk: setup
	$(BIN)/python bench/bulk.py $(BULK_ARGS)

bench: bench-setup
	$(BIN)/python bench/run.py

bench-quick: bench-setup
	$(BIN)/python bench/run.py --quick

bench-profile: bench-setup
	$(BIN)/python bench/profile_leader.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache
