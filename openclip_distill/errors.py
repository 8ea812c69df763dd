"""User-facing errors: one line naming the flag or file and the fix, non-zero exit, no traceback."""


class DistillUsageError(ValueError):
    """Bad input from the user (a flag, a file, a name). Library code raises it (it is a
    ``ValueError``); the CLI's ``main`` prints ``str(err)`` on one line and exits with status 2."""

    exit_code = 2


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive steps produced a NaN/inf loss (the run stops, exit 3)."""

    exit_code = 3
