"""Dataset name -> adapter that reads the dataset's official on-disk layout into `Recordings`.

Each adapter is `load(path, **options) -> Recordings` of a module of this package, on top of the
readers in mujo_jax.sources; "npz" is the generic format any user can write
(`recording.load_npz`).
"""

from __future__ import annotations

from mujo_jax.downstream import mhealth
from mujo_jax.downstream import mmfit
from mujo_jax.downstream import motionsense
from mujo_jax.downstream import myogym
from mujo_jax.downstream import utd_mhad
from mujo_jax.sources import recording

ADAPTERS = {
    "npz": recording.load_npz,
    "utd_mhad": utd_mhad.load,
    "mmfit": mmfit.load,
    "motionsense": motionsense.load,
    "mhealth": mhealth.load,
    "myogym": myogym.load,
}
# Datasets whose class names need their own zero-shot prompts (e.g. UTD-MHAD's action
# descriptions, or names that do not read as English after "a person doing").
CLASS_PROMPTS = {
    "utd_mhad": utd_mhad.class_prompts,
    "motionsense": motionsense.class_prompts,
    "mhealth": mhealth.class_prompts,
}


def load(name: str, path: str, **options) -> recording.Recordings:
  """Reads dataset `name` from `path` with its adapter's keyword `options`."""
  if name not in ADAPTERS:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(ADAPTERS)}")
  return ADAPTERS[name](path, **options)


def class_prompts(name: str, class_names, template: str = "a person doing {}") -> list[str]:
  """Zero-shot prompts, one per class: the dataset's own if it has them (CLASS_PROMPTS), else
  `template` around the class name."""
  if name in CLASS_PROMPTS:
    return list(CLASS_PROMPTS[name](list(class_names)))
  return [template.format(c.replace("_", " ")) for c in class_names]
