"""The project's exception types.

Every failure a user can cause (a missing file, a malformed pose file, a bad flag) raises a
`WonderlandError` whose message names the file, key, shape or flag at fault. The CLI prints these
without a traceback and exits with status 2; any other exception is a bug and keeps its traceback.
"""


class WonderlandError(Exception):
  """A user-facing error: the message says what is wrong and where."""


class InputFileError(WonderlandError):
  """A file given by the user is missing, unreadable or malformed."""


class CapacityError(WonderlandError):
  """A static buffer (e.g. the rasterizer's Gaussian-tile pair list) is too small for the input."""


class OutputError(WonderlandError):
  """An output cannot be written: an unwritable or full location, a foreign directory, a failed encoder."""
