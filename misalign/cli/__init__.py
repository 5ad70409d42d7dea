"""The `misalign-fast` command line: each command parses its options, calls one function of the
run layer (misalign.run) or of a tool, and prints what comes back (misalign.terminal).  The
commands live beside this file: runs.py (build, bench, run, check, plan, report,
compare, validate-judge) and tools.py (dedup, taxonomy, classify, perf, models,
cache)."""
from __future__ import annotations

import os
import signal

import click

from misalign.cli.common import Group

# each command's module is imported only when that command runs (or --help lists them all)
COMMANDS = {name: f"misalign.cli.{module}:{name.replace('-', '_')}" for module, names in {
    "runs": ("build", "bench", "run", "check", "plan", "report", "compare", "validate-judge"),
    "tools": ("dedup", "taxonomy", "classify", "perf", "models", "cache")}.items() for name in names}


def _stop(signum, frame):
    """SIGTERM or SIGHUP (`kill`, `timeout`, a batch scheduler, a closed terminal) end the command
    as Ctrl-C does: through every `finally`, so that engines are shut down and workers closed
    before the process exits (128 + the signal's number, as a shell reports it)."""
    raise SystemExit(128 + signum)


@click.group(cls=Group, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="misalign-fast")
@click.option("--verbose", is_flag=True, envvar="MISALIGN_VERBOSE",
              help="Show vLLM's own output (by default it goes to RUN_DIR/logs/MODEL.log).")
def main(verbose):
    """misalign-fast: build and run a misalignment benchmark for language models.

    Stage I builds a dataset of prompts paired with aligned and misaligned responses across
    safety, value and cultural domains; Stage II measures how well models detect the
    misaligned ones.  `misalign-fast run` does both on a CPU demo with a real, small instruct
    model (SmolLM2-135M); each command's --help says what it reads and writes.
    """
    if verbose:                          # read by the engine pool, here and in Ray workers
        os.environ["MISALIGN_VERBOSE"] = "1"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")
    for stopping in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stopping, _stop)

