# Two entry points for a fresh machine: `make demo` (set up, then run Stage I and Stage II on the bundled
# sample with the embedded CPU default) and `make test` (set up, then run the test suite).
# Both create .venv here.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test setup bench clean

$(STAMP): pyproject.toml setup.py misalign/_simhash.pyx misalign/_lines.pyx misalign/_xxh3.h misalign/_words.h misalign/_bitcount.h misalign/_chars.h misalign/_within.h scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/misalign-fast run

test: $(STAMP)
	$(VENV)/bin/python -m pytest --durations=25

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_simhash.py
	$(VENV)/bin/python benchmarks/bench_prefix_cache.py
	$(VENV)/bin/python benchmarks/bench_classify.py
	$(VENV)/bin/python benchmarks/bench_detect.py

clean:
	rm -rf build runs $(VENV) misalign/*.so misalign/_simhash.c misalign/_lines.c
