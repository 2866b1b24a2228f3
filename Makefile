# The two commands of the README; the scripts do the work so that they also run
# without make.

.PHONY: run test bench screenshots

run:
	@scripts/run

test:
	@scripts/test $(PYTEST_ARGS)

bench:
	@scripts/bench $(BENCH_ARGS)

screenshots:
	@BREAKGLASS_SCREENSHOT_DIR=docs/screenshots scripts/test tests/test_browser.py
