"""Dataset name -> adapter that reads the dataset's official on-disk layout into `Recordings`.

Each adapter is a module of this package with `load(path, **options) -> Recordings`; "npz" is
the generic format any user can write (`recordings.load_npz`).
"""

from __future__ import annotations

import importlib

from mujo_jax.downstream import recordings

ADAPTERS = {
    "npz": "mujo_jax.downstream.recordings:load_npz",
    "utd_mhad": "mujo_jax.downstream.utd_mhad:load",
    "mmfit": "mujo_jax.downstream.mmfit:load",
    "motionsense": "mujo_jax.downstream.motionsense:load",
    "mhealth": "mujo_jax.downstream.mhealth:load",
    "myogym": "mujo_jax.downstream.myogym:load",
}


def load(name: str, path: str, **options) -> recordings.Recordings:
  """Reads dataset `name` from `path` with its adapter's keyword `options`."""
  if name not in ADAPTERS:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(ADAPTERS)}")
  module, function = ADAPTERS[name].split(":")
  return getattr(importlib.import_module(module), function)(path, **options)


def class_prompts(name: str, class_names, template: str = "a person doing {}") -> list[str]:
  """Zero-shot prompts, one per class: the adapter's `class_prompts` if it has one (e.g.
  UTD-MHAD's action descriptions), else `template` around the class name."""
  if name in ADAPTERS and name != "npz":
    module = importlib.import_module(ADAPTERS[name].split(":")[0])
    if hasattr(module, "class_prompts"):
      return list(module.class_prompts(list(class_names)))
  return [template.format(c.replace("_", " ")) for c in class_names]
