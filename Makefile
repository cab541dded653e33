# Run `make` (or `make help`) to list the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

GO ?= go
# Modules to vet and test: the root, then examples/ and bench/ where they
# have their own go.mod.
MODULES := . $(patsubst %/go.mod,%,$(wildcard examples/go.mod bench/go.mod))

# Soak test knobs: make soak DURATION=1h CLIENTS=64
DURATION ?= 10m
CLIENTS ?= 32
# GORM's own test suite, from a go-gorm/gorm checkout at the version in go.mod:
# make gorm-suite GORM_SRC=../gorm [MODES="plain cached"]
GORM_SRC ?=
# Extra arguments for demo-balances: make demo-balances ARGS="-duration 5s -plot stale.svg"
ARGS ?=

.PHONY: help
help: ## List the targets
	@echo "Usage: make <target> [VAR=value]"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z0-9_-]+:.*## / { printf "  %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.PHONY: services
services: ## Make sure PostgreSQL and Redis answer (starts or installs them)
	@bash scripts/services.sh

.PHONY: demo
demo: ## Run the quick start example
	cd examples && $(GO) run ./quickstart

.PHONY: demo-balances
demo-balances: services ## Run the balances example (ARGS="..." passes flags)
	cd examples && $(GO) run ./balances $(ARGS)

.PHONY: test
test: services ## Vet and test every module with the race detector
	@status=0; \
	for m in $(MODULES); do \
		echo "==> $$m: go vet ./..."; \
		(cd $$m && $(GO) vet ./...) || status=1; \
		echo "==> $$m: go test -race -count=1 ./..."; \
		(cd $$m && $(GO) test -race -count=1 -timeout 30m ./...) || status=1; \
	done; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED"; fi; \
	exit $$status

.PHONY: bench
bench: services ## Print the comparison table (bench/cmd/benchtable)
	@if [ -d bench/cmd/benchtable ]; then \
		cd bench && $(GO) run ./cmd/benchtable; \
	else \
		echo "bench: bench/cmd/benchtable does not exist yet"; \
	fi

.PHONY: soak
soak: services ## Run the soak test (DURATION=10m CLIENTS=32)
	$(GO) test -v -run TestSoak -timeout 0 -count=1 . -args -soak.duration=$(DURATION) -soak.clients=$(CLIENTS)

.PHONY: gorm-suite
gorm-suite: services ## Run GORM's test suite with and without the plugin (GORM_SRC=dir)
	@GORM_SRC="$(GORM_SRC)" GO="$(GO)" bash scripts/gorm-suite.sh

# Differential test knobs: make differential SEED=0 STEPS=2000 (SEED=0: from the clock)
SEED ?= 0
STEPS ?= 2000

.PHONY: differential
differential: services ## Run the differential test longer, on a new seed (SEED=0 STEPS=2000)
	$(GO) test -count=1 -run '^TestDifferential$$' -timeout 0 . -args -diff.seed=$(SEED) -diff.steps=$(STEPS)

.PHONY: lint
lint: ## Fail on unformatted files, then go vet every module
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting (run make fmt):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	@for m in $(MODULES); do \
		echo "==> $$m: go vet ./..."; \
		(cd $$m && $(GO) vet ./...); \
	done

.PHONY: fmt
fmt: ## Format every Go file in place
	gofmt -w .

.PHONY: ci
ci: test ## What CI runs (.ci/run)
