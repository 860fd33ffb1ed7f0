"""The one exception hierarchy; each class carries the exit code `tasks.py` turns it into."""


class HvgateError(Exception):
    """Base of every error the tool reports to the user without a traceback."""

    exit_code = 3


class ConfigurationError(HvgateError):
    """Bad input: matrix.yaml, a lock file, a flag. Nothing has been built or written."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class EngineError(HvgateError):
    """The Docker engine (or another part of the machine the tool needs) failed."""

    exit_code = 3


class Busy(HvgateError):
    """Another run holds the results directory's lock; this one did nothing."""

    exit_code = 3


class UnsafeCells(HvgateError):
    """The run finished, and some cells are flaky, broken or inconclusive."""

    exit_code = 1


class Interrupted(HvgateError):
    """Ctrl-C or SIGTERM; finished results are kept."""

    exit_code = 130


class InputError(ConfigurationError):
    """A file the tool reads back (results, history, lock, checkpoint) is malformed or hostile:
    one line naming the file and the field; nothing has been written."""

    def __init__(self, problem: str):
        # The line may quote the file's own keys: it stays one line of printable text.
        printable = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in problem[:1000])
        super().__init__(printable)
