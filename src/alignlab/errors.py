"""The one exception family users see: the CLI prints these as a clean message (no traceback), exit code 2."""


class AlignlabError(Exception):
    """Bad input or configuration; the message names the file, record and field where it can."""
