"""Errors a user fixes by changing the config or the input (printed without a traceback)."""


class ConfigError(ValueError):
    """A config value is inconsistent or cannot run here; the message says what to change."""


class DataError(ValueError):
    """Input data is malformed; the message names the file, the line and the field."""
