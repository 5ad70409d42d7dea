"""Exceptions a user can act on.  The CLI prints their message on one line and exits with 2."""


class MisalignError(Exception):
    """Base class: every error misalign-fast raises on purpose.  Its message is one line: line
    breaks that come with data (a column name, a path) are shown as \\n."""

    def __init__(self, message: str = ""):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class InputError(MisalignError):
    """An input file cannot be used: unreadable, wrong format, missing column or a bad row.

    `row` is 1-based over data rows (the CSV header is not a row); None when the problem is the
    whole file.
    """

    def __init__(self, path, problem, row=None):
        self.path = str(path)
        self.row = row
        self.problem = problem
        where = f"{self.path}: row {row}" if row is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(MisalignError):
    """A configuration value is out of range or inconsistent."""


class OutputError(MisalignError):
    """An output path is not ours to write: an existing device, FIFO, socket, directory or
    symbolic link where a file would go, or a directory that is not a run directory."""
