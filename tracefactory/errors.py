"""Exceptions for configuration, schema and infrastructure faults.

Per-row problems are never exceptions: they are data (a reason column). Every message says what was
given, what is expected and how to fix it.
"""


class TraceFactoryError(Exception):
    """Base class for tracefactory's own errors."""


class ConfigError(TraceFactoryError, ValueError):
    """A configuration value is missing, of the wrong type, or not one of the allowed options."""

    def __init__(self, field: str, got: object, expected: str, hint: str = ""):
        self.field = field
        self.got = got
        self.expected = expected
        msg = f"config field '{field}': got {got!r}; expected {expected}"
        super().__init__(msg + (f". {hint}" if hint else ""))


class SchemaError(TraceFactoryError):
    """A table does not have the columns or types its schema in schemas/ promises."""


class BackendError(TraceFactoryError, RuntimeError):
    """A model backend could not be created or failed as a whole (not a single bad request)."""


class RunLockedError(TraceFactoryError):
    """Another process is writing the same run directory."""
