"""User-facing errors: the CLI prints these as one clear message, never a stack trace."""


class KennerError(Exception):
    """An error the user can act on (bad input, bad flag, missing file)."""


class DataError(KennerError):
    """A problem with a dataset: names the file and, where there is one, the row."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.row = row


class ImageError(DataError):
    """An image that cannot be used: missing, empty, not an image, corrupt, truncated, too large."""


class InvalidInput(KennerError, ValueError):
    """Bad arrays passed to an estimator (shape, NaN, unknown labels): a KennerError the CLI prints, and a
    ValueError as scikit-learn expects of its estimators."""


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM from a scheduler or ``timeout``) handled like Ctrl-C: finished work is kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def interrupt_on_signal(signum: int, frame: object) -> None:
    """A signal handler that raises ``Interrupted`` once; a second signal gets the default action (exit)."""
    import signal

    signal.signal(signum, signal.SIG_DFL)
    raise Interrupted(signum)
