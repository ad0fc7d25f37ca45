"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class DialError(Exception):
    """Base class: the message alone must tell the user what is wrong and where."""


class InputError(DialError):
    """Bad input rows; the message names the file, the line and the field."""


class LeakError(DialError):
    """PII patterns survived scrubbing."""


class BudgetError(DialError):
    """A token budget cannot be met without dropping what must never be dropped."""
