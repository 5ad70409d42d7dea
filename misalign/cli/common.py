"""What the command line's modules share: the two consoles, the one-line error handling, the
options of every command that takes a run CONFIG, and the run layer's hooks as this terminal
shows them."""
from __future__ import annotations

import errno
import importlib
import math
import sys
import warnings
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from misalign import terminal
from misalign.errors import MisalignError

# Everything we print is data (paths, model names, [sections]): never read as rich markup, nor
# ":name:" as an emoji code.
console = Console(stderr=True, markup=False, emoji=False)
# A log or a pipe gets 120 columns rather than rich's 80, so that tables keep their figures whole.
out = Console(width=None if sys.stdout.isatty() else 120, markup=False, emoji=False)


# faults of the machine, not of misalign-fast: a full disk, a read-only or forbidden place, a quota
ENVIRONMENT_FAULTS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def one_line(text: str) -> str:
    """`text` with control characters (a newline in a file's name, say) shown as escapes, so that
    an error stays one line whatever paths it names."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def progress_bars():
    """Transient bars of rows done, on stderr; rich.progress is imported only when one is shown
    (~10 ms of every command's start otherwise)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    return Progress(TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} rows"),
                    TimeRemainingColumn(), console=console, transient=True)


class Group(click.Group):
    """Turn our own errors into one line on stderr and exit status 2.  Commands named in
    `lazy_commands` ("name": "module:attribute") are imported when invoked or listed, so that
    a quick command (dedup, taxonomy) does not pay for importing every other one (click's own
    recipe for lazy subcommands)."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx, name):
        if name in self.lazy_commands and name not in self.commands:
            module, attribute = self.lazy_commands[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:          # a bad option value: one line too, with where to look
            fail(exc.format_message() + (f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""))
        except MisalignError as exc:
            fail(str(exc))
        except KeyboardInterrupt:                 # everything's `finally` has run: engines are shut down
            console.print("stopped (Ctrl-C): nothing half-written is kept; a run started again resumes from its "
                          "checkpoints", highlight=False, soft_wrap=True)
            sys.exit(130)
        except OSError as exc:
            if exc.errno not in ENVIRONMENT_FAULTS:
                raise
            fail(f"{exc.filename}: " * bool(exc.filename) + f"{exc.strerror} (nothing half-written is left; free the "
                 "space or fix the permissions and run again: a run resumes from its checkpoints)")


def fail(message: str) -> None:
    """`error: MESSAGE` as one line on stderr, exit status 2.  The message is data (paths, names,
    [sections]): never read as rich markup, its control characters escaped."""
    console.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), highlight=False, soft_wrap=True)
    sys.exit(2)


class FiniteRange(click.FloatRange):
    """A number within a range; nan and infinity are refused (they pass a range's comparisons)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class OutputFile(click.Path):
    """A file the command will write: refused while the arguments are parsed, before anything
    runs, if it exists and is not a regular file (misalign.tables.check_output)."""

    def __init__(self):
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        from misalign.tables import check_output
        path = super().convert(value, param, ctx)
        try:
            check_output(path)
        except MisalignError as exc:
            self.fail(str(exc), param, ctx)
        return path


def config_options(f):
    """The options every command that takes a run CONFIG shares."""
    f = click.option("--executor", "--engine", "executor", type=click.Choice(["local", "ray"]),
                     help="Where the model stages run: in this process (local, the default) or on "
                          "Ray actors, one engine each (ray; see the [ray] config section).")(f)
    f = click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Where the run is written (and resumed from); overrides run.dir.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one config value, e.g. --set respond.candidates=1 (repeatable).")(f)
    return click.argument("config_path", metavar="[CONFIG]", required=False,
                          type=click.Path(exists=True, dir_okay=False, path_type=Path))(f)


def load_config(config_path, overrides, run_dir, executor, settings=None):
    """The config, with --set overrides and then the command's own options (typed values, never
    pasted into TOML: a directory named a"b stays a"b)."""
    from misalign import config as config_mod
    settings = {key: value for key, value in (settings or {}).items() if value is not None}
    if run_dir is not None:
        settings["run.dir"] = str(run_dir)
    if executor is not None:
        settings["run.executor"] = executor
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", FutureWarning)
        config = config_mod.load(config_path or config_mod.embedded_default(), overrides, settings)
    for note in notes:
        console.print(Text(f"note: {note.message}"), soft_wrap=True)
    return config


def fresh_option(f):
    """--fresh and --no-cache: what a run may take from earlier ones."""
    f = click.option("--no-cache", "no_cache", is_flag=True,
                     help="Ask the engines every label question, not the answer cache (answers to the same "
                          "question from the same model, kept across runs; see `misalign-fast cache`).")(f)
    return click.option("--fresh", is_flag=True,
                        help="Recompute every stage, whatever the run directory holds (by default a stage's "
                             "checkpoint is reused when its settings, models, templates and input are unchanged, "
                             "and recomputed, with what changed, when they are not).")(f)


class Display:
    """The run layer's hooks as this terminal shows them: progress bars on stderr while stages
    run, every table and note on stdout (a bar is stopped before anything is printed)."""

    def __init__(self, run_dir="", per_domain: bool = True):
        self.run_dir, self.per_domain, self.bars, self.tasks = run_dir, per_domain, None, {}

    def hooks(self):
        from misalign.run import Hooks
        return Hooks(checked=lambda checks: terminal.checked(out, checks), planned=self.planned, note=self.note,
                     decided=lambda found: terminal.decisions(out, found), progress=self.progress, built=self.built,
                     benched=self.benched, reported=self.reported)

    def planned(self, schedule):
        terminal.schedule(out, schedule)

    def note(self, text):
        out.print(Text(text))

    def progress(self, stage, done, total):
        if self.bars is None:
            self.bars = progress_bars()
            self.bars.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.bars.add_task(stage, total=total)
        self.bars.update(self.tasks[stage], completed=done)

    def stop(self):
        if self.bars is not None:
            self.bars.stop()
        self.bars, self.tasks = None, {}

    def built(self, summary):
        self.stop()
        terminal.built(out, summary, self.per_domain)

    def benched(self, meta):
        self.stop()
        terminal.profile(out, meta["profile"], "per model under test")

    def reported(self, res):
        terminal.benched(out, res)
        out.print(Text(f"results.json, samples.parquet, plots/ and report.html written to {self.run_dir}"))
