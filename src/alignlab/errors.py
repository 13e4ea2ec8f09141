"""The one exception family users see: the CLI prints these as a clean message (no traceback), exit code 2."""


class AlignlabError(Exception):
    """Bad input or configuration; the message names the file, record and field where it can."""


class ConfigError(AlignlabError, ValueError):
    """A config value or key is wrong; the message names the key and what was expected."""


class AlreadyDone(AlignlabError):
    """Not a failure: what was asked is already complete (e.g. a finished run rerun unchanged). The CLI prints
    the message and exits 0."""


class CheckpointError(AlignlabError):
    """A checkpoint (or what a resumed run depends on, such as its data split) could not be written, read or
    continued; the message says which and why."""
