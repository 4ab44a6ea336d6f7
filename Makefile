# lbdoctor — build, test and guest-test targets. `make test` is what CI runs.
GO       ?= go
RUN      ?= ^TestGuest
# Packages that hold guest tests (files tagged //go:build guest).
GUEST_PKGS := $(sort $(dir $(shell grep -rl --include='*_test.go' '^//go:build guest' .)))

.PHONY: build test lint unit guest-test guest-prepare clean FORCE

build: bin/lbdoctor

# Static on purpose: it must run in a bare guest and on any LB without a libc match.
bin/lbdoctor: FORCE
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./cmd/lbdoctor
	@$(GO) version -m $@ | grep -q 'CGO_ENABLED=0' || { echo "$@ is not static"; exit 1; }

bin/guestexec: FORCE
	CGO_ENABLED=0 $(GO) build -o $@ ./internal/guest/guestexec

# Everything: formatting and vet, host tests (root ones need root), guest tests.
test: lint unit guest-test

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags guest ./...

unit:
	$(GO) test -count=1 ./...

# Guest tests run inside a qemu guest with Debian's IPVS kernel; one guest per
# package. Single test: make guest-test RUN=TestGuestOneArmStages
guest-test: bin/lbdoctor bin/guestexec
	@bin/guestexec -check; rc=$$?; \
	if [ $$rc = 10 ]; then exit 0; elif [ $$rc != 0 ]; then exit $$rc; fi; \
	bin/guestexec -prepare && \
	CGO_ENABLED=0 LBDOCTOR_GUEST_FILES=$(CURDIR)/bin/lbdoctor:/usr/local/bin/lbdoctor \
	$(GO) test -count=1 -v -tags guest -exec $(CURDIR)/bin/guestexec -run '$(RUN)' $(GUEST_PKGS)

guest-prepare: bin/guestexec
	bin/guestexec -prepare

clean:
	rm -rf bin
