"""The promises README.md makes to a newcomer stay true."""

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _readme_commands():
  text = open(os.path.join(ROOT, "README.md")).read()
  block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
  return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_install_and_run_commands():
  run, tests = _readme_commands()[:2]
  assert "-r requirements.txt" in run and "mujo_jax.main --config=configs/pretrain.py:demo" in run
  assert "-r requirements.txt" in tests and tests.endswith("-m pytest -q")


def test_ci_runs_exactly_the_readme_test_command():
  ci = open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
  assert _readme_commands()[1] in ci
