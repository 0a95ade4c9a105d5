# cachesync: `make` (or `make help`) lists the targets.
#
# A target is listed when its line carries a `## description` comment.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

BINARY := bin/cachesync

# The test command: README.md names it and .ci/run runs it through `make test`.
# Keep the three in step.
GO_TEST := go test -race -count=1 -timeout 25m ./...

# staticcheck: the one on PATH if installed, else this pinned release through the
# Go module proxy (v0.8.2 is staticcheck 2026.2.2).
STATICCHECK_VERSION := v0.8.2
STATICCHECK ?= $(if $(shell command -v staticcheck 2>/dev/null),staticcheck,go run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION))

# How long each fuzz target runs under `make fuzz`.
FUZZTIME ?= 30s

.PHONY: help
help: ## list the targets
	@echo "usage: make <target>"
	@echo
	@awk 'BEGIN { FS = ":[^#]*## " } /^[a-zA-Z0-9_-]+:[^#]*## / { printf "  %-7s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install PostgreSQL and redis-server if missing (Debian/Ubuntu; says what to do elsewhere)
	bash scripts/ensure-servers.sh

.PHONY: build
build: ## build bin/cachesync
	go build -o $(BINARY) ./cmd/cachesync

.PHONY: test
test: deps ## run every test (unit, real-server and e2e) with the race detector
	$(GO_TEST)

.PHONY: lint
lint: ## gofmt, go vet and staticcheck
	@unformatted=$$(gofmt -l .); \
	if [[ -n "$$unformatted" ]]; then \
		echo "gofmt: these files need formatting (run gofmt -w on them):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	go vet ./...
	$(STATICCHECK) ./...

.PHONY: fuzz
fuzz: ## fuzz the rules.hcl parser, the pgoutput decoder, the array parser and the journal, 30s each (FUZZTIME=2m to change)
	go test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./config
	go test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./replication
	go test -run='^$$' -fuzz='^FuzzParseTextArray$$' -fuzztime=$(FUZZTIME) ./mapping
	go test -run='^$$' -fuzz='^FuzzRefreshValuesMatchHCL$$' -fuzztime=$(FUZZTIME) ./mapping
	go test -run='^$$' -fuzz='^FuzzAppendJSONString$$' -fuzztime=$(FUZZTIME) ./mapping
	go test -run='^$$' -fuzz='^FuzzDecodeEntry$$' -fuzztime=$(FUZZTIME) ./journal
	go test -run='^$$' -fuzz='^FuzzOpen$$' -fuzztime=$(FUZZTIME) ./journal

.PHONY: demo
demo: ## start private PostgreSQL and Redis, run cachesync on a narrated workload, clean up
	bash scripts/demo.sh

.PHONY: bench
bench: build ## measure cachesync against its ceilings on private servers (~12 min; docs/benchmarks.md)
	go run ./cmd/cachesync-bench -cachesync $(BINARY) -runs 3 -full -cluster -out bench/results -chart docs/benchmarks.png
	go run ./cmd/cachesync-bench -client-only -cluster -runs 3 -out bench/results

.PHONY: clean
clean: ## remove build output
	rm -rf bin/
