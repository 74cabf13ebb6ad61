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


def _imports(path: str) -> set[str]:
  """Top-level package names a Python file imports (import x.y / from x.y import z)."""
  import ast  # pylint: disable=import-outside-toplevel
  tree = ast.parse(open(path).read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module.split(".")[0])
  return names


def test_the_library_imports_no_application_and_no_config():
  """mujo_jax/ is the library: only the entry point (main.py) may reach data_prep (to build
  the demo data); nothing imports configs at run time."""
  offenders = []
  for folder, _, files in os.walk(os.path.join(ROOT, "mujo_jax")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        found = _imports(path) & {"data_prep", "configs"}
        if os.path.relpath(path, ROOT) == os.path.join("mujo_jax", "main.py"):
          found -= {"data_prep"}
        if found:
          offenders.append(f"{os.path.relpath(path, ROOT)} imports {sorted(found)}")
  assert not offenders, offenders


def test_finetune_config_options_match_the_adapters():
  """configs/finetune.py's per-dataset options are exactly the adapters' keyword arguments."""
  import inspect  # pylint: disable=import-outside-toplevel
  from configs import finetune  # pylint: disable=import-outside-toplevel
  from mujo_jax.downstream import datasets  # pylint: disable=import-outside-toplevel
  assert set(finetune.ADAPTER_OPTIONS) == set(datasets.ADAPTERS)
  for name, load in datasets.ADAPTERS.items():
    params = inspect.signature(load).parameters
    keywords = {k for k, p in list(params.items())[1:]
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    assert set(finetune.ADAPTER_OPTIONS[name]) == keywords, name
