"""Labelled wearable recordings in one in-memory form, and the generic `.npz` format.

Every downstream dataset adapter (mujo_jax.downstream: utd_mhad, mmfit, motionsense, mhealth,
myogym) builds a `Recordings` from what the readers of this package return; users bring any
other dataset as one `.npz` file with the same fields:

  x               float32 [N, C]  all recordings concatenated in time
  y               int32 [N]       class index into class_names, -1 = unlabelled / null
  subject         int32 [N]
  recording       int32 [N]       windows never cross a change of this id (nor of subject)
  class_names     str [K]
  channel_names   str [C]         acc_x, acc_y, acc_z, gyr_x, gyr_y, gyr_z are used (others
                                  ignored; gyroscope optional)
  sample_rate_hz  scalar
  acc_unit        'g' or 'm/s^2'
  gyr_unit        'rad/s' or 'deg/s'
  acc_includes_gravity  optional bool, default true
  split_train, split_val, split_test   optional int32 subject ids: a predefined subject split

It must load with `np.load(path, allow_pickle=False)`. `load_npz` validates it and names the
offending key; `save_npz` writes it (tests and adapters use it to make fixtures).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

ACC_CHANNELS = ("acc_x", "acc_y", "acc_z")
GYR_CHANNELS = ("gyr_x", "gyr_y", "gyr_z")
ACC_UNITS = ("g", "m/s^2")
GYR_UNITS = ("rad/s", "deg/s")
SPLIT_NAMES = ("train", "val", "test")
REQUIRED_KEYS = ("x", "y", "subject", "recording", "class_names", "channel_names",
                 "sample_rate_hz", "acc_unit", "gyr_unit")
OPTIONAL_KEYS = ("acc_includes_gravity",) + tuple(f"split_{s}" for s in SPLIT_NAMES)


class RecordingsError(ValueError):
  """Bad dataset input; the message names the file and the key."""


@dataclasses.dataclass
class Recordings:
  """One dataset's labelled recordings (see the module docstring for the fields).

  `splits` maps split name -> subject ids when the dataset defines an official split
  (None: the protocol draws a seeded subject split). `sensor` says where the device was worn
  (for reports). `notes` are facts the adapter wants in the results (e.g. "no gyroscope").
  """
  x: np.ndarray
  y: np.ndarray
  subject: np.ndarray
  recording: np.ndarray
  class_names: tuple[str, ...]
  channel_names: tuple[str, ...]
  sample_rate_hz: float
  acc_unit: str
  gyr_unit: str
  acc_includes_gravity: bool = True
  splits: dict[str, tuple[int, ...]] | None = None
  name: str = ""
  sensor: str = ""
  notes: tuple[str, ...] = ()

  def __post_init__(self):
    validate(self, where=self.name or "recordings")

  @property
  def has_gyroscope(self) -> bool:
    return all(c in self.channel_names for c in GYR_CHANNELS)

  def channels(self, names) -> np.ndarray:
    """x[:, the named channels] (float32)."""
    return self.x[:, [self.channel_names.index(c) for c in names]]


def _err(where: str, key: str, what: str) -> RecordingsError:
  return RecordingsError(f"{where}: key {key!r}: {what}")


def validate(rec: Recordings, where: str) -> None:
  """Checks shapes, dtypes, units and label ranges; raises RecordingsError naming the key."""
  x = rec.x
  if not isinstance(x, np.ndarray) or x.ndim != 2:
    raise _err(where, "x", f"must be a 2-D array [N, C], got shape {np.shape(x)}")
  if not np.issubdtype(x.dtype, np.floating):
    raise _err(where, "x", f"must be floating point, got {x.dtype}")
  n, c = x.shape
  if n == 0:
    raise _err(where, "x", "has no samples")
  for key in ("y", "subject", "recording"):
    v = getattr(rec, key)
    if not isinstance(v, np.ndarray) or v.shape != (n,):
      raise _err(where, key, f"must have shape ({n},) like x's first axis, got {np.shape(v)}")
    if not np.issubdtype(v.dtype, np.integer):
      raise _err(where, key, f"must be integer, got {v.dtype}")
  if len(rec.channel_names) != c:
    raise _err(where, "channel_names", f"has {len(rec.channel_names)} names for {c} columns of x")
  if len(set(rec.channel_names)) != c:
    raise _err(where, "channel_names", f"has duplicates: {list(rec.channel_names)}")
  missing = [ch for ch in ACC_CHANNELS if ch not in rec.channel_names]
  if missing:
    raise _err(where, "channel_names", f"lacks {missing} (accelerometer is required; "
               f"have {list(rec.channel_names)})")
  gyr = [ch for ch in GYR_CHANNELS if ch in rec.channel_names]
  if gyr and len(gyr) != 3:
    raise _err(where, "channel_names", f"has only {gyr} of {list(GYR_CHANNELS)}")
  used = [rec.channel_names.index(ch) for ch in ACC_CHANNELS + tuple(gyr)]
  bad = ~np.isfinite(x[:, used])
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise _err(where, "x", f"{int(bad.sum())} non-finite values in used channels, first at "
               f"row {row}, channel {rec.channel_names[used[col]]!r}")
  if not rec.class_names:
    raise _err(where, "class_names", "is empty")
  k = len(rec.class_names)
  if rec.y.size and (rec.y.min() < -1 or rec.y.max() >= k):
    raise _err(where, "y", f"values must be -1 or in [0, {k}) for {k} class_names, got range "
               f"[{rec.y.min()}, {rec.y.max()}]")
  if not (np.isscalar(rec.sample_rate_hz) and np.isfinite(rec.sample_rate_hz)
          and rec.sample_rate_hz > 0):
    raise _err(where, "sample_rate_hz", f"must be a positive number, got {rec.sample_rate_hz!r}")
  if rec.acc_unit not in ACC_UNITS:
    raise _err(where, "acc_unit", f"must be one of {ACC_UNITS}, got {rec.acc_unit!r}")
  if rec.gyr_unit not in GYR_UNITS:
    raise _err(where, "gyr_unit", f"must be one of {GYR_UNITS}, got {rec.gyr_unit!r}")
  if rec.splits is not None:
    owner = {}
    present = set(np.unique(rec.subject).tolist())
    for split, subjects in rec.splits.items():
      if split not in SPLIT_NAMES:
        raise _err(where, f"split_{split}", f"unknown split; known: {SPLIT_NAMES}")
      for s in subjects:
        if s in owner:
          raise _err(where, f"split_{split}", f"subject {s} is also in split {owner[s]!r}")
        owner[s] = split
        if s not in present:
          raise _err(where, f"split_{split}", f"subject {s} has no samples in 'subject'")
    for split in ("train", "test"):
      if not rec.splits.get(split):
        raise _err(where, f"split_{split}", "a predefined split needs train and test subjects")


def _scalar(data: Mapping, key: str, path: str):
  v = np.asarray(data[key])
  if v.ndim != 0:
    raise _err(path, key, f"must be a scalar, got shape {v.shape}")
  return v.item()


def _strings(data: Mapping, key: str, path: str) -> tuple[str, ...]:
  v = np.asarray(data[key])
  if v.ndim != 1 or v.dtype.kind not in "US":
    raise _err(path, key, f"must be a 1-D array of strings, got {v.dtype} shape {v.shape}")
  return tuple(str(s) for s in v)


def load_npz(path: str) -> Recordings:
  """Reads and validates a generic-format `.npz`; errors name the file and the key."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file (expected a generic-format .npz)")
  try:
    data = np.load(path, allow_pickle=False)
  except ValueError as e:   # object arrays need pickle: not allowed
    raise RecordingsError(f"{path}: cannot be read with allow_pickle=False ({e}); store strings "
                          f"as fixed-width str arrays, e.g. np.array(names, dtype=str)") from e
  except Exception as e:  # zipfile.BadZipFile, OSError
    raise RecordingsError(f"{path}: not a readable .npz file ({e})") from e
  with data:
    keys = set(data.files)
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    if missing:
      raise _err(path, missing[0], f"is missing (required: {list(REQUIRED_KEYS)}; the file has "
                 f"{sorted(keys)})")
    try:
      fields = {k: data[k] for k in keys}
    except ValueError as e:
      raise RecordingsError(f"{path}: an array needs pickle ({e}); store strings as str arrays") \
          from e
  splits = {s: tuple(int(v) for v in np.asarray(fields[f"split_{s}"]).ravel())
            for s in SPLIT_NAMES if f"split_{s}" in fields}
  gravity = _scalar(fields, "acc_includes_gravity", path) \
      if "acc_includes_gravity" in fields else True
  if not isinstance(gravity, (bool, np.bool_)):
    raise _err(path, "acc_includes_gravity", f"must be a bool, got {gravity!r}")
  for k in ("y", "subject", "recording"):
    if not np.issubdtype(fields[k].dtype, np.integer):
      raise _err(path, k, f"must be integer (int32), got {fields[k].dtype}")
  rate = _scalar(fields, "sample_rate_hz", path)
  if not isinstance(rate, (int, float)) or isinstance(rate, bool):
    raise _err(path, "sample_rate_hz", f"must be a number, got {rate!r}")
  return Recordings(
      x=np.asarray(fields["x"]).astype(np.float32) if np.issubdtype(fields["x"].dtype, np.floating)
      else fields["x"],
      y=fields["y"].astype(np.int32), subject=fields["subject"].astype(np.int32),
      recording=fields["recording"].astype(np.int32),
      class_names=_strings(fields, "class_names", path),
      channel_names=_strings(fields, "channel_names", path),
      sample_rate_hz=float(rate), acc_unit=str(_scalar(fields, "acc_unit", path)),
      gyr_unit=str(_scalar(fields, "gyr_unit", path)), acc_includes_gravity=bool(gravity),
      splits=splits or None, name=path)


def save_npz(path: str, rec: Recordings) -> None:
  """Writes `rec` in the generic format (strings as fixed-width str arrays, no pickle)."""
  arrays = dict(x=rec.x.astype(np.float32), y=rec.y.astype(np.int32),
                subject=rec.subject.astype(np.int32), recording=rec.recording.astype(np.int32),
                class_names=np.array(rec.class_names, dtype=str),
                channel_names=np.array(rec.channel_names, dtype=str),
                sample_rate_hz=np.float64(rec.sample_rate_hz), acc_unit=np.str_(rec.acc_unit),
                gyr_unit=np.str_(rec.gyr_unit),
                acc_includes_gravity=np.bool_(rec.acc_includes_gravity))
  for split, subjects in (rec.splits or {}).items():
    arrays[f"split_{split}"] = np.asarray(subjects, dtype=np.int32)
  np.savez(path, **arrays)


def first_bad_line(path: str, n_fields: int, delimiter: str | None = None,
                   skip: int = 0) -> str | None:
  """Where a numeric text table first goes wrong, as 'line L[, column C]: why' (1-based;
  `skip` header lines; whitespace-separated unless `delimiter`): adapters put it in errors."""
  with open(path, encoding="utf-8-sig") as f:
    for number, line in enumerate(f, 1):
      if number <= skip or not line.strip():
        continue
      fields = line.split(delimiter) if delimiter else line.split()
      if len(fields) != n_fields:
        return f"line {number}: {len(fields)} fields, expected {n_fields}"
      for column, field in enumerate(fields, 1):
        try:
          float(field)
        except ValueError:
          return f"line {number}, column {column}: cannot parse {field.strip()!r} as a number"
  return None
