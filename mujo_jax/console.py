"""What the command-line programs print: our INFO lines, libraries' only from WARNING.

Orbax, JAX and Grain log through absl at INFO (Orbax several lines per save or
restore); a user running a program wants its own progress lines and every
warning, not those.
"""

import logging as std_logging
import os

from absl import logging

# This project's source folders (mujo_jax/ and data_prep/ beside it). By path prefix, not
# by a folder name anywhere in the path: a checkout named mujo_jax holds its .venv too.
_LIBRARY = os.path.dirname(os.path.abspath(__file__))
_OURS = tuple(os.path.join(p, "") for p in
              (_LIBRARY, os.path.join(os.path.dirname(_LIBRARY), "data_prep")))


class _QuietLibraries(std_logging.Filter):

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING
            or os.path.abspath(record.pathname).startswith(_OURS))


def setup() -> None:
  """INFO to stderr for this project's modules, WARNING and above for everything."""
  logging.set_verbosity(logging.INFO)
  logging.set_stderrthreshold(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
