# Run `make` (or `make help`) to list the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

GO ?= go
# Modules to vet and test: the root, then examples/ and bench/ where they
# have their own go.mod.
MODULES := . $(patsubst %/go.mod,%,$(wildcard examples/go.mod bench/go.mod))

# Soak test knobs: make soak DURATION=1h CLIENTS=64 [PHASES=cdc]
# (PHASES: run only the phases whose name contains it)
DURATION ?= 10m
CLIENTS ?= 32
PHASES ?=
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
soak: services ## Run the soak test (DURATION=10m CLIENTS=32 PHASES=)
	$(GO) test -v -run TestSoak -timeout 0 -count=1 . -args -soak.duration=$(DURATION) -soak.clients=$(CLIENTS) -soak.only='$(PHASES)'

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
lint: ## Fail on unformatted files or an internal package that imports the root, then go vet every module
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting (run make fmt):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	@$(MAKE) internal-imports
	@for m in $(MODULES); do \
		echo "==> $$m: go vet ./..."; \
		(cd $$m && $(GO) vet ./...); \
	done

# Every dependency, direct or not, of every package under internal/ and of
# its tests, one "package|dependency" per line; a line naming the root
# package (or a test build of it) is a violation, and so is an import cycle
# (an internal package importing the root that imports it). A package's
# external tests show as <package>_test.
.PHONY: internal-imports
internal-imports: ## Fail if a package under internal/ (or its tests) imports the root package
	@root=$$($(GO) list -m); \
	deps=$$($(GO) list -e -test -f '{{$$p := .ImportPath}}{{range .Deps}}{{$$p}}|{{.}}{{"\n"}}{{end}}{{with .Error}}{{$$p}}|ERROR {{.Err}}{{"\n"}}{{end}}' ./internal/...); \
	bad=$$(echo "$$deps" | awk -F'|' -v root="$$root" '$$2 == root || index($$2, root " [") == 1 || $$2 ~ /^ERROR .*import cycle/ { sub(/ \[.*/, "", $$1); if ($$1 !~ /\.test$$/) print "  " $$1 }' | sort -u); \
	if [ -n "$$bad" ]; then \
		echo "internal-imports: packages under internal/ must never import the root package $$root"; \
		echo "(directly or through another package; see docs/testing.md). These do:"; \
		echo "$$bad"; \
		echo "Find the path with: go list -deps -test ./internal/<pkg> | grep -x '$$root'"; \
		exit 1; \
	fi; \
	echo "internal-imports: no package under internal/ imports $$root"

.PHONY: fmt
fmt: ## Format every Go file in place
	gofmt -w .

.PHONY: ci
ci: test ## What CI runs (.ci/run)
