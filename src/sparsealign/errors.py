"""User-facing errors: one line, names the file/line/field and the fix; the CLI prints them without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment (not a bug). `str(err)` is the whole message."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        message = " ".join(message.split())  # force one line
        if hint:
            message = f"{message} (fix: {' '.join(hint.split())})"
        super().__init__(message)


class DataError(UserError):
    """A broken input file: the message names the file, the line and the reason."""

    def __init__(self, path: object, reason: str, *, line: int | None = None, hint: str | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{where}: {reason}", hint=hint)


class ConfigError(UserError):
    """An invalid config: names the file and the field, and the allowed values when known."""
