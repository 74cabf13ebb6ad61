"""Pretraining on a weighted mixture of datasets (e.g. real mocap + UTD-MHAD + the demo).

`config.data.mixture` lists the sources, each `(dir, weight)` or `(dir, weight, modalities)`:

    (("data/mocap", 0.5), ("data/demo", 0.25), ("data/utd_mhad_h36m", 0.25, ("imu", "pose")))

Every batch holds a fixed number of rows from each source: weight x batch, rounded by largest
remainder, at least one row per source. Fixed counts rather than a per-row coin flip keep the
proportions exact at any batch size and make each batch a concatenation of ordinary
`input_pipeline.make_dataset` batches, so shuffling, augmentation, worker prefetch and exact
resume are the single-source pipeline's (the mixture is a Grain zip over them; its iterator
state is theirs).

A modality a source lacks, or that its entry leaves out (`modalities`: e.g. UTD-MHAD without
its action text, so that pretraining never sees the labels of a dataset it is evaluated on),
is masked: `modality_mask` 0 and the array zeros, so it drops out of every pair of the
contrastive loss (`contrastive.contrastive_loss` counts only rows where both modalities are
present); it is never zero-filled into the loss. A source whose kept modality does not fit
the model (another skeleton, window length or tokenizer) is an error naming the source: a
20-joint Kinect skeleton is not a 17-joint H36M one, whatever the shapes allow.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import grain
import numpy as np

from mujo_jax import records
from mujo_jax.modalities import INPUT_KEYS
from mujo_jax.modalities import MODALITIES


@dataclasses.dataclass(frozen=True)
class Source:
  """One entry of `config.data.mixture`."""
  dir: str
  weight: float
  modalities: tuple[str, ...] = MODALITIES


def parse_sources(spec: Sequence) -> list[Source]:
  """`config.data.mixture` -> Sources; a malformed entry is an error naming it."""
  sources = []
  for i, entry in enumerate(spec):
    entry = (entry,) if isinstance(entry, str) else tuple(entry)
    if not 2 <= len(entry) <= 3 or not isinstance(entry[0], str):
      raise ValueError(f"data.mixture[{i}] = {entry!r}: expected (dir, weight) or "
                       f"(dir, weight, modalities)")
    try:
      weight = float(entry[1])
    except (TypeError, ValueError):
      raise ValueError(f"data.mixture[{i}] ({entry[0]}): weight {entry[1]!r} is not a "
                       f"number") from None
    if not weight > 0:
      raise ValueError(f"data.mixture[{i}] ({entry[0]}): weight {weight} must be > 0")
    modalities = MODALITIES
    if len(entry) == 3:
      modalities = (entry[2],) if isinstance(entry[2], str) else tuple(entry[2])
      unknown = sorted(set(modalities) - set(MODALITIES))
      if unknown or not modalities:
        raise ValueError(f"data.mixture[{i}] ({entry[0]}): modalities {modalities} "
                         f"(unknown: {unknown}); known: {MODALITIES}")
    sources.append(Source(entry[0], weight, tuple(m for m in MODALITIES if m in modalities)))
  if not sources:
    raise ValueError("data.mixture is empty")
  return sources


def rows_per_source(weights: Sequence[float], batch_size: int) -> list[int]:
  """Rows of each source in a batch of `batch_size`: proportional, largest remainder.

  Raises when a source would get no row (more sources than rows, or a tiny weight).
  """
  w = np.asarray(weights, np.float64)
  exact = w / w.sum() * batch_size
  rows = np.floor(exact).astype(int)
  order = np.argsort(-(exact - rows), kind="stable")
  rows[order[:batch_size - rows.sum()]] += 1
  if (rows == 0).any():
    i = int(np.flatnonzero(rows == 0)[0])
    raise ValueError(f"a batch of {batch_size} gives source {i} (weight {weights[i]}) no "
                     f"row: raise its weight or the batch size (rows {rows.tolist()})")
  return rows.tolist()


def _reference_shapes(model_config) -> dict[str, tuple[int, ...]]:
  """The per-row shape of each modality's array that the model reads."""
  c = model_config
  return {"imu": (c.imu_len, c.imu_channels), "pose": (c.pose_len, c.num_joints, 3),
          "video": (c.video_len, c.video_dim), "text": (c.text_len,)}


def check_source(source: Source, info: records.DatasetInfo, reference: records.DatasetInfo,
                 model_config) -> None:
  """Raises ValueError when a modality `source` keeps does not fit the model or the
  first source (skeleton, IMU locations, tokenizer, shapes), naming the source."""
  specs = info.array_specs()
  shapes = _reference_shapes(model_config)
  bad = []
  for m in source.modalities:
    if m not in model_config.modalities:
      continue
    have = specs[INPUT_KEYS[m]].shape
    want = shapes[m]
    if m == "imu":
      have = (have[1], have[2])
      if info.imu_locations != reference.imu_locations:
        bad.append(f"IMU locations {info.imu_locations} differ from {reference.imu_locations}")
    if m == "pose" and info.skeleton != reference.skeleton:
      bad.append(f"skeleton {info.skeleton!r} is not {reference.skeleton!r}")
    if m == "text" and (info.tokenizer, info.vocab_size) != (reference.tokenizer,
                                                             reference.vocab_size):
      bad.append(f"tokenizer {info.tokenizer} ({info.vocab_size}) is not "
                 f"{reference.tokenizer} ({reference.vocab_size})")
    if tuple(have) != tuple(want):
      bad.append(f"{m} rows are {tuple(have)}, the model reads {tuple(want)}")
  if bad:
    raise ValueError(f"mixture source {source.dir} ({info.name}) does not fit: "
                     + "; ".join(bad) + "; leave the modality out of its entry, e.g. "
                     f"({source.dir!r}, {source.weight}, {tuple(m for m in source.modalities)})"
                     " without it, or convert it to fit")


def conform(batch: dict[str, np.ndarray], source: Source, model_config) -> dict[str, np.ndarray]:
  """A source's batch with the modalities it leaves out masked (mask 0, zeros of the
  model's shape) and every array in the model's shape."""
  batch = dict(batch)
  rows = len(batch["modality_mask"])
  shapes = _reference_shapes(model_config)
  mask = np.array(batch["modality_mask"], copy=True)
  for j, m in enumerate(MODALITIES):
    key = INPUT_KEYS[m]
    if m in source.modalities and m in model_config.modalities:
      continue
    mask[:, j] = 0
    dtype = batch[key].dtype if key in batch else np.float16
    batch[key] = np.zeros((rows,) + shapes[m], dtype)
    if m == "text":
      batch["text_len"] = np.zeros(rows, np.int32)
  batch["modality_mask"] = mask
  return batch


def _concatenate(batches: tuple[dict[str, np.ndarray], ...], sources: Sequence[Source],
                 model_config) -> dict[str, np.ndarray]:
  parts = [conform(b, s, model_config) for b, s in zip(batches, sources)]
  keys = set.intersection(*(set(p) for p in parts))
  out = {k: np.concatenate([p[k] for p in parts]) for k in sorted(keys)}
  out["source"] = np.concatenate([np.full(len(p["modality_mask"]), i, np.int32)
                                  for i, p in enumerate(parts)])
  return out


def make_mixture_dataset(spec: Sequence, *, batch_size: int, model_config, make_dataset,
                         seed: int = 0, log=logging.info) -> grain.IterDataset:
  """This process's batches of `batch_size` rows mixed from `spec` (module docstring).

  make_dataset(data_dir, batch_size, seed) -> one source's IterDataset
  (`input_pipeline.make_dataset` with the trainer's options bound). Each source shuffles
  with its own seed (seed + its position). Rows keep a `source` column (the position).
  """
  sources = parse_sources(spec)
  infos = [records.DatasetInfo.load(s.dir) for s in sources]
  for source, info in zip(sources, infos):
    check_source(source, info, infos[0], model_config)
  rows = rows_per_source([s.weight for s in sources], batch_size)
  for i, (source, info, n) in enumerate(zip(sources, infos, rows)):
    used = [m for m in source.modalities if m in model_config.modalities]
    log("mixture source %d: %s (%s), weight %g -> %d of %d rows per batch; modalities %s",
        i, source.dir, info.name, source.weight, n, batch_size, ",".join(used))
  parents = [make_dataset(s.dir, n, seed + i) for i, (s, n) in enumerate(zip(sources, rows))]
  return grain.experimental.ZipIterDataset(parents).map(
      functools.partial(_concatenate, sources=sources, model_config=model_config))
