"""Errors a user can fix. The CLI prints their message without a traceback and exits with 2."""


class UserError(Exception):
    """Bad input or missing resources, with a message that says how to fix it."""


class ConfigError(UserError, ValueError):
    """A config file or override names an unknown key, a wrong type or an out-of-range value."""


class MissingWeightsError(UserError, FileNotFoundError):
    """Model weights are neither on local disk nor fetchable; the message says how to provide them."""


def first_line(error: BaseException) -> str:
    """An exception's message, first line only (h5py and numpy add multi-line detail), or its
    type's name when it has no message."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
