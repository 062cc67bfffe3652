"""The base of every error this package raises on purpose. Imports nothing.

Bad input, missing weights or files, a run folder that holds another run: each is a
`DualEncoderError` whose message says what to pass instead. The command-line tools print those
as one line and exit 2; anything else is a bug and keeps its traceback. Subclasses also keep the
built-in base callers have always caught (`ValueError`, `FileNotFoundError`, ...).
"""


class DualEncoderError(Exception):
    """Something the user can fix: the message names the file, flag or value and what to do."""


class InvalidArgumentError(DualEncoderError, ValueError):
    """A value, flag or combination of them that cannot work (named in the message)."""


class PathNotFoundError(DualEncoderError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class WrongTypeError(InvalidArgumentError, TypeError):
    """A library call got the wrong kind of argument (a number where text belongs, a string for a
    count); the message says what was expected. Still a TypeError for callers that catch one."""
