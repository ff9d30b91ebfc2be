# deltann's entry points. `make demo` and `make test` are the README's two commands: each fetches
# what it needs (libonnxruntime from PyPI's onnxruntime wheel) and builds what it runs.

CARGO ?= cargo
ORT_VERSIONS ?= 1.32.0 1.31.1

.PHONY: demo test test-fast check fmt clippy ort bench clean-results

## Runs the default sweep (data/sweep.toml: the shipped model and photos) and prints its summary.
demo: ort
	$(CARGO) build --bin deltann
	./target/debug/deltann collect data/sweep.toml

## The whole test suite (tests needing ../shared skip, saying so, when it is absent).
test:
	scripts/test.sh

## The suite without the slow reference-accuracy test.
test-fast:
	scripts/test.sh -E 'not test(slow_)'

## What CI checks: formatting, lints, tests.
check: fmt clippy test

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## libonnxruntime for the ort engine (two versions: the tests compare them).
ort:
	scripts/fetch-onnxruntime.sh $(ORT_VERSIONS)

## Benchmarks (optimised build in target-bench/; see BENCHMARKS.md).
bench: ort
	scripts/bench.sh

clean-results:
	rm -rf results
