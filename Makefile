# The two commands of the README; the scripts do the work so that they also run
# without make.

.PHONY: run test bench

run:
	@scripts/run

test:
	@scripts/test $(PYTEST_ARGS)

bench:
	@scripts/bench $(BENCH_ARGS)
