"""Exceptions a user can cause.

Every error that follows from a user's input (a bad config, a missing or corrupt file, arrays of the
wrong shape) derives from :class:`DeepCMBError`. The command line prints its message on one line and
exits with code 2; anything else is a bug and keeps its traceback.
"""


class DeepCMBError(Exception):
    """Base class of all errors a user can cause."""


class ConfigError(DeepCMBError):
    """A configuration value is missing, misspelt, of the wrong type or out of range.

    The message starts with the dotted name of the offending field, e.g. ``geometry.pixel_arcmin``.
    """


class InputError(DeepCMBError):
    """An input file or array is missing, unreadable, or does not match what is expected."""


class OutputExistsError(DeepCMBError):
    """The output path exists and ``overwrite`` was not requested."""


class OutputError(DeepCMBError):
    """An output cannot be written: the disk is full, a file size limit or quota is reached, the folder is
    read-only or not writable. The message names the file; nothing is left under its final name."""


class OutputLockedError(DeepCMBError):
    """Another command is writing the same output (its lock file, :mod:`deepcmb.io.lock`, names it)."""


class BackendError(DeepCMBError):
    """Keras or the Keras backend it is set to (``KERAS_BACKEND``) cannot be imported."""


class ConvergenceError(DeepCMBError):
    """An iterative solver did not reach its tolerance within its iteration limit."""
