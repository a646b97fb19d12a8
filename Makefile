# Sluice: `make run` serves with the shipped config; `make test` runs every test.
GO      ?= go
BIN     := bin/smtpd
CONFIG  ?= config/smtpd.toml
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
FUZZTIME ?= 60s

.PHONY: all build run test deps vet fuzz bench bench-ab clean install uninstall

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
SERVER_FUZZ := FuzzSession FuzzDataStream
COMMAND_FUZZ := FuzzParseMail FuzzParseRcpt

# Longer fuzzing: make fuzz FUZZTIME=10m. A failing input lands in
# testdata/fuzz/<Target>/: commit it as a regression seed.
fuzz:
	@for f in $(SERVER_FUZZ); do \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./server/ || exit 1; \
	done
	@for f in $(COMMAND_FUZZ); do \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./server/command/ || exit 1; \
	done
	$(GO) test -run '^$$' -fuzz '^FuzzReadHeader$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./transaction/
	$(GO) test -run '^$$' -fuzz '^FuzzWrite7Bit$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMIN) ./queue/

# Sluice side by side with smtp-sink, qpsmtpd, Haraka and Postfix on loopback
# (bench/README.md): installs the peers when missing, prints one table.
# make bench BENCH_QUICK=1 takes a few minutes; PEERS="..." SHAPES="..." pick.
bench:
	bash bench/run.sh

# Two builds side by side with smtp-sink, interleaved (bench/ab.sh):
# make bench-ab A=ce17e1b [B=HEAD] (B defaults to the work tree).
bench-ab:
	@test -n "$(A)" || { echo "make bench-ab A=REVISION [B=REVISION]"; exit 2; }
	bash bench/ab.sh $(A) $(B)

# Installs smtpd, the sample production config and the systemd units
# (docs/install.md). Everything goes under $(DESTDIR) (empty: the live
# system); nothing else is created: the sluice user and /var/lib/sluice
# are the admin's (or the unit's StateDirectory=). An existing
# /etc/sluice/smtpd.toml is never overwritten: the sample goes beside it
# as smtpd.toml.sample. The units go where systemd looks for units of
# this prefix: $(PREFIX)/lib/systemd/system (/usr/local/lib/systemd/system
# by default, /usr/lib/systemd/system for a distribution package with
# PREFIX=/usr), ExecStart naming $(BINDIR)/smtpd.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
INSTALL    ?= install

# install uses bin/smtpd as it is (built if missing), so that `make build`
# as yourself, then `sudo make install`, needs no Go in root's PATH. A
# binary older than a source file (a `git pull` without `make build`) is
# refused rather than installed; STALE_OK=1 installs it anyway.
install: $(BIN)
	@newer=$$(find . -path ./var -prune -o \( -name '*.go' -o -name go.mod -o -name go.sum \) -newer $(BIN) -print 2>/dev/null | head -1); \
	if [ -n "$$newer" ] && [ -z "$(STALE_OK)" ]; then \
		echo "make install: $(BIN) is older than $$newer: run 'make build' first (as yourself; root needs no Go), or STALE_OK=1 to install it as it is" >&2; exit 1; \
	fi
	$(INSTALL) -d -m 755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/sluice
	$(INSTALL) -m 755 $(BIN) $(DESTDIR)$(BINDIR)/smtpd
	sed -e 's|/usr/local/bin/smtpd|$(BINDIR)/smtpd|g' -e 's|/etc/sluice/|$(SYSCONFDIR)/sluice/|g' \
		packaging/systemd/sluice.service > $(DESTDIR)$(UNITDIR)/sluice.service.tmp
	chmod 644 $(DESTDIR)$(UNITDIR)/sluice.service.tmp
	mv $(DESTDIR)$(UNITDIR)/sluice.service.tmp $(DESTDIR)$(UNITDIR)/sluice.service
	$(INSTALL) -m 644 packaging/systemd/sluice.socket $(DESTDIR)$(UNITDIR)/sluice.socket
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/sluice/smtpd.toml ]; then \
		echo "$(DESTDIR)$(SYSCONFDIR)/sluice/smtpd.toml exists: kept; the sample is smtpd.toml.sample beside it"; \
		$(INSTALL) -m 644 packaging/smtpd.toml $(DESTDIR)$(SYSCONFDIR)/sluice/smtpd.toml.sample; \
	else \
		$(INSTALL) -m 644 packaging/smtpd.toml $(DESTDIR)$(SYSCONFDIR)/sluice/smtpd.toml; \
	fi
	@echo "Installed. Next: docs/install.md (the sluice user, certificates, systemctl daemon-reload)."

$(BIN):
	$(MAKE) --no-print-directory build

# Removes what install put there, but not $(SYSCONFDIR)/sluice/smtpd.toml
# (the admin's config) nor /var/lib/sluice (mail may be in it).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/smtpd $(DESTDIR)$(UNITDIR)/sluice.service $(DESTDIR)$(UNITDIR)/sluice.socket \
		$(DESTDIR)$(SYSCONFDIR)/sluice/smtpd.toml.sample
