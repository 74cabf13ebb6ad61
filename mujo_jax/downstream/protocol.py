"""The evaluation protocol: subject-disjoint splits and stratified label fractions.

Splits. A dataset's official subject split is used when it defines one (`Recordings.splits`);
without a validation part, `val_fraction` of the training subjects (seeded, at least one)
become validation subjects. Otherwise subjects are shuffled with `split_seed` and the first
round(test_fraction * n) (at least one) are test, the next round(val_fraction * n) (at least
one) validation, the rest training. The split does not change with the run seed: every seed
and mode is scored on the same test subjects.

Label fractions. A run with fraction f trains on round(f * n_c) windows of each class c of the
training split (at least one), drawn with the run seed: stratified, every class present.
Validation keeps all its labels (model selection and early stopping use it; test never).
"""

from __future__ import annotations

import numpy as np

from mujo_jax.downstream import windows as windows_lib


def subject_split(subjects: np.ndarray, official: dict[str, tuple[int, ...]] | None, *,
                  split_seed: int = 0, val_fraction: float = 0.15,
                  test_fraction: float = 0.3) -> dict[str, tuple[int, ...]]:
  """{"train", "val", "test"} -> sorted subject ids, disjoint (module docstring)."""
  present = sorted(set(np.unique(subjects).tolist()))
  rng = np.random.default_rng(split_seed)
  if official:
    split = {k: tuple(sorted(v)) for k, v in official.items()}
    if not split.get("val"):
      train = list(split["train"])
      rng.shuffle(train)
      n_val = max(1, int(round(val_fraction * len(train))))
      if n_val >= len(train):
        raise ValueError(f"cannot take validation subjects from {len(train)} training subject(s)")
      split["val"], split["train"] = tuple(sorted(train[:n_val])), tuple(sorted(train[n_val:]))
    return split
  if len(present) < 3:
    raise ValueError(f"a subject-disjoint train/val/test split needs at least 3 subjects, have "
                     f"{present}")
  order = list(present)
  rng.shuffle(order)
  n_test = max(1, int(round(test_fraction * len(order))))
  n_val = max(1, int(round(val_fraction * len(order))))
  if n_test + n_val >= len(order):
    n_test, n_val = 1, 1
  return {"test": tuple(sorted(order[:n_test])),
          "val": tuple(sorted(order[n_test:n_test + n_val])),
          "train": tuple(sorted(order[n_test + n_val:]))}


def split_windows(windows: windows_lib.Windows, split: dict[str, tuple[int, ...]]
                  ) -> dict[str, windows_lib.Windows]:
  """Windows of each split's subjects; every split must have some."""
  out = {}
  for name in ("train", "val", "test"):
    index = np.flatnonzero(np.isin(windows.subject, split[name]))
    if not len(index):
      raise ValueError(f"split {name!r} (subjects {list(split[name])}) has no windows")
    out[name] = windows.take(index)
  return out


def label_fraction(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a stratified `fraction` of `y`, at least one per class present."""
  if not 0 < fraction <= 1:
    raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(y):
    members = np.flatnonzero(y == c)
    k = max(1, int(round(fraction * len(members))))
    chosen.append(rng.choice(members, size=k, replace=False))
  return np.sort(np.concatenate(chosen))
