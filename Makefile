# chime-fence: two commands do everything on a fresh Debian machine.
#   make demo   installs what it needs, builds, runs the story on a local lab
#   make test   all tests (lab tests need root and the packages; CI has both)

GO       ?= go
BIN      := bin
PKGS     := ./...
UNIT     := $(shell $(GO) list ./... 2>/dev/null | grep -v '/e2e')
E2E      := $(shell $(GO) list ./e2e/... 2>/dev/null)
LDFLAGS  := -X main.version=$(shell git describe --tags --always --dirty 2>/dev/null || echo devel)

.PHONY: all build test unit e2e vet fmt-check deps demo bench bench-fence bench-heartbeats fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

deps:
	scripts/install-deps.sh

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Unit tests run with the race detector: this is a concurrent daemon.
unit:
	$(GO) test -race -count=1 -timeout 15m $(UNIT)

# Lab tests build real hosts (namespaces, libvirtd, QEMU, ipmi_sim); one
# package at a time so labs never compete for the 2 cores.
e2e:
	$(GO) test -race -count=1 -p 1 -timeout 40m $(E2E)

test: fmt-check vet unit e2e

demo: deps build
	scripts/demo.sh

# Every fuzz target for FUZZTIME (default 60s) each; `make test` runs their
# seed corpora as ordinary tests.
fuzz:
	scripts/fuzz.sh

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(UNIT)

# Decide-to-fence → power read back Off on ipmi_sim: chime-fence's IPMI
# level against Debian's fence_ipmilan, 20 runs each (needs root-free
# loopback only; installs nothing).
bench-fence:
	$(GO) run ./cmd/chime-fence-bench -runs 20

# 10,000 simulated agents heartbeating every 1 s into one daemon for 60 s,
# then 100 stopped: daemon CPU, peak RSS and detection delay against the
# detector's goals. Runs inside its own network namespace (needs root and
# iproute2); nothing leaves loopback.
bench-heartbeats:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/chime-fence ./cmd/chime-heartbeat-bench
	$(BIN)/chime-heartbeat-bench --daemon $(BIN)/chime-fence

clean:
	rm -rf $(BIN)
