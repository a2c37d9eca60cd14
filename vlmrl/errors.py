"""Errors a user can fix. The CLI prints their message without a traceback and exits with 2."""


class UserError(Exception):
    """Bad input or missing resources, with a message that says how to fix it."""


class ConfigError(UserError, ValueError):
    """A config file or override names an unknown key, a wrong type or an out-of-range value."""


class MissingWeightsError(UserError, FileNotFoundError):
    """Model weights are neither on local disk nor fetchable; the message says how to provide them."""
