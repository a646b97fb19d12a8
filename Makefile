# Sluice: `make run` serves with the shipped config; `make test` runs every test.
GO      ?= go
BIN     := bin/smtpd
CONFIG  ?= config/smtpd.toml
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
FUZZTIME ?= 60s

.PHONY: all build run test deps vet fuzz bench clean

all: build

build:
	$(GO) build -ldflags "-X github.com/sluice-mta/sluice/cmd/smtpd/cli.Version=$(VERSION)" -o $(BIN) ./cmd/smtpd

# Serves on 127.0.0.1:2525 (inbound for example.test) and 127.0.0.1:2587
# (submission: STARTTLS + AUTH, users in ./var/passwd); mail lands in
# ./var/mail/new/.
run: build
	@mkdir -p var/mail
	@test -f var/passwd || install -m 600 /dev/null var/passwd
	@echo "Sluice: 127.0.0.1:2525 accepts mail for @example.test; 127.0.0.1:2587 is submission (STARTTLS + AUTH)."
	@echo "Mail lands in ./var/mail/new/. Add a submission user: ./$(BIN) passwd -file var/passwd alice@example.test"
	./$(BIN) -config $(CONFIG)

deps:
	@bash .ci/deps.sh

# gofmt, go vet and staticcheck (pinned in go.mod's tool line: `go tool
# staticcheck` builds it from the module proxy on first use).
vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt would change:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# Every test, then every test again under the race detector, then each fuzz
# target for a bounded number of inputs (their seed corpora already ran as
# plain tests). RACE=0 skips the race run. The budget is a count, not a
# duration: Go 1.26's fuzz coordinator can fail a duration run with a bare
# "context deadline exceeded" at the very end, having found nothing
# (golang/go#75804, fixed in Go 1.27).
RACE ?= 1
test: deps vet
	$(GO) test -count=1 ./...
	@if [ "$(RACE)" = 1 ]; then echo "$(GO) test -race -count=1 ./..."; $(GO) test -race -count=1 ./...; fi
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TESTFUZZTIME) FUZZMIN=200x

TESTFUZZTIME ?= 5000x
FUZZMIN ?= 10s
SERVER_FUZZ := FuzzSession FuzzDataStream FuzzParseMailArg FuzzParseRcptArg

# Longer fuzzing: make fuzz FUZZTIME=10m. A failing input lands in
# testdata/fuzz/<Target>/: commit it as a regression seed.
fuzz:
	@for f in $(SERVER_FUZZ); do \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./server/ || exit 1; \
	done
	$(GO) test -run '^$$' -fuzz '^FuzzReadHeader$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./transaction/
	$(GO) test -run '^$$' -fuzz '^FuzzWrite7Bit$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./queue/

# Sluice side by side with smtp-sink, qpsmtpd, Haraka and Postfix on loopback
# (bench/README.md): installs the peers when missing, prints one table.
# make bench BENCH_QUICK=1 takes a few minutes; PEERS="..." SHAPES="..." pick.
bench:
	bash bench/run.sh
