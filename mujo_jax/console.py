"""What the command-line programs print: our INFO lines, libraries' only from WARNING.

Orbax, JAX and Grain log through absl at INFO (Orbax several lines per save or
restore); a user running a program wants its own progress lines and every
warning, not those.
"""

import logging as std_logging
import os

from absl import logging

_OURS = tuple(os.sep + name + os.sep for name in ("mujo_jax", "data_prep"))


class _QuietLibraries(std_logging.Filter):

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or any(p in record.pathname for p in _OURS)


def setup() -> None:
  """INFO to stderr for this project's modules, WARNING and above for everything."""
  logging.set_verbosity(logging.INFO)
  logging.set_stderrthreshold(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
