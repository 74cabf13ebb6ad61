"""What programs print (mujo_jax/console.py): our INFO lines, libraries' from WARNING."""

import logging
import os

from data_prep import make_demo
from mujo_jax import console
from mujo_jax import train


def _kept(pathname: str, level: int = logging.INFO) -> bool:
  record = logging.LogRecord("absl", level, pathname, 1, "message", None, None)
  return bool(console._QuietLibraries().filter(record))  # pylint: disable=protected-access


def test_our_info_lines_pass_and_libraries_only_from_warning():
  assert _kept(train.__file__) and _kept(make_demo.__file__)
  library = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "manager.py")
  assert not _kept(library)
  assert _kept(library, logging.WARNING)


def test_a_library_inside_a_checkout_named_like_the_package_stays_quiet():
  """A checkout folder named mujo_jax holds its .venv: its libraries are not ours."""
  venv_file = os.path.join(os.sep, "home", "u", "mujo_jax", ".venv", "lib", "python3.11",
                           "site-packages", "orbax", "checkpoint", "manager.py")
  assert not _kept(venv_file)
