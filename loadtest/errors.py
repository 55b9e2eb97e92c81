"""The sweep's one error type."""


class SweepError(RuntimeError):
    """A failure with a message meant for the user (printed without a traceback)."""
