"""The Grain input pipeline: FiMAD shards -> batches of numpy arrays -> global jax.Arrays.

Indexed shards (the normal case):
  random-access source over all shards of a split
  -> this process's disjoint slice (jax.process_index() of jax.process_count()),
     in a seeded order reshuffled every epoch, read a batch at a time
     (ShuffledRecordBatches)
  -> parsed in one vectorised step per batch (records.decode_batch)
  -> per-example augmentation, vectorised over the batch (IMU location, modality dropout)
  -> multi-worker prefetch.
Everything before the prefetch is a Grain MapDataset, so the iterator state is an
element index: it checkpoints with Orbax (grain.checkpoint) and resumes exactly.

Shards without an index are read sequentially with a window shuffle.

The trainer turns each host-local batch into a global jax.Array sharded over the
mesh's data axis with `to_global_batch`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from absl import flags
import grain
import jax
import numpy as np

from mujo_jax import records
from mujo_jax import tfrecord

SIGNAL_KEYS = ("imu", "pose", "video")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Per-example augmentation, applied to whole batches with numpy.

  imu_locations: "all" keeps [B, S, T, 6]; "random" picks one real location per
    example; a tuple of names picks one of those at random (only among the ones
    an example really has) -> `imu` [B, T, 6] and `imu_location` [B].
  modality_dropout: probability of hiding each present modality of an example
    (mask set to 0, data zeroed); at least two modalities always stay, so every
    example keeps a contrastive pair.
  """
  imu_locations: str | tuple[str, ...] = "random"
  modality_dropout: float = 0.0


class IndexedShardSource(grain.sources.RandomAccessDataSource):
  """All records of a list of indexed shards as one random-access sequence.

  Elements are (global index, payload); payload is None for a corrupt record
  when skip_corrupt is set (the record is logged and counted, then dropped).
  Readers open lazily so the source pickles into Grain's worker processes.
  """

  def __init__(self, paths: Sequence[str], *, verify_crc: bool = True,
               skip_corrupt: bool = False):
    if not paths:
      raise ValueError("no shards given")
    self.paths = list(paths)
    self.verify_crc = verify_crc
    self.skip_corrupt = skip_corrupt
    counts = [len(tfrecord.load_index(p)) for p in self.paths]
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._readers: dict[int, tfrecord.ShardReader] = {}
    self.num_skipped = 0

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_readers"] = {}
    return state

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __repr__(self) -> str:
    return f"IndexedShardSource({len(self.paths)} shards, {len(self)} records)"

  def _locate(self, index: int) -> tuple[tfrecord.ShardReader, int]:
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    shard = int(np.searchsorted(self._starts, index, side="right")) - 1
    reader = self._readers.get(shard)
    if reader is None:
      reader = self._readers[shard] = tfrecord.ShardReader(self.paths[shard],
                                                           verify=self.verify_crc)
    return reader, index - int(self._starts[shard])

  def describe(self, index: int) -> str:
    reader, i = self._locate(index)
    return reader.describe(i)

  def __getitem__(self, index: int) -> tuple[int, bytes | None]:
    reader, i = self._locate(int(index))
    try:
      return index, reader.read(i)
    except tfrecord.CorruptRecordError as e:
      if not self.skip_corrupt:
        raise
      self.num_skipped += 1
      logging.warning("skipping corrupt record (%d skipped so far in this process): %s",
                      self.num_skipped, e)
      return index, None

  def _getitems(self, indices: Sequence[int]) -> list[tuple[int, bytes | None]]:
    return [self[i] for i in indices]


class ShuffledRecordBatches(grain.MapDataset):
  """Batches of raw records from this process's slice, reshuffled every epoch.

  Element k is the list of (record id, payload) at stream positions
  [k * batch_size, (k + 1) * batch_size), where position p of epoch e is record
  `local[perm_e[p]]`: `local` are the ids `process_index::process_count` and
  perm_e a permutation seeded by (seed, e). Batches run across epoch boundaries.

  Grain has the pieces (shuffle, repeat, batch) but maps every index through a
  Feistel network in a separate call (~30 us per element) and fetches a batch
  one element at a time (its batched-read pushdown is an experiment switched
  off in this release); here a whole batch is one numpy gather and one batched
  read of the source.
  """

  def __init__(self, parent: grain.MapDataset, *, batch_size: int, seed: int, shuffle: bool,
               process_index: int, process_count: int, num_epochs: int | None,
               drop_remainder: bool):
    super().__init__(parent)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    self._local = np.arange(process_index, len(parent), process_count, dtype=np.int64)
    if len(self._local) < (batch_size if drop_remainder else 1):
      raise ValueError(f"process {process_index} of {process_count} gets {len(self._local)} "
                       f"of {len(parent)} records, fewer than one batch of {batch_size}")
    self._batch_size, self._seed, self._shuffle = batch_size, seed, shuffle
    self._num_records = None if num_epochs is None else num_epochs * len(self._local)
    self._drop_remainder = drop_remainder
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    if self._num_records is None:
      return sys.maxsize
    whole, rest = divmod(self._num_records, self._batch_size)
    return whole + int(bool(rest) and not self._drop_remainder)

  def __str__(self) -> str:
    return f"ShuffledRecordBatches(batch_size={self._batch_size}, seed={self._seed})"

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      if len(self._orders) >= 2:
        self._orders.pop(min(self._orders))
      order = self._local
      if self._shuffle:
        order = order[np.random.default_rng([self._seed, epoch]).permutation(len(order))]
      self._orders[epoch] = order
    return self._orders[epoch]

  def record_ids(self, index: int) -> list[int]:
    stop = (index + 1) * self._batch_size
    if self._num_records is not None:
      stop = min(stop, self._num_records)
    epoch, position = np.divmod(np.arange(index * self._batch_size, stop), len(self._local))
    ids = np.empty_like(position)
    for e in np.unique(epoch):
      here = epoch == e
      ids[here] = self._order(int(e))[position[here]]
    return ids.tolist()

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < len(self):
      raise IndexError(f"batch {index} outside [0, {len(self)})")
    return self._parent._getitems(self.record_ids(index))  # pylint: disable=protected-access


class SequentialShardDataset(grain.IterDataset):
  """One unindexed shard read front to back, CRCs checked.

  Grain's own TFRecordIterDataset does not check CRCs and does not name the file
  in its errors, hence this small reader. State is the byte offset, so it
  checkpoints too.
  """

  def __init__(self, path: str):
    super().__init__()
    self.path = path

  def __iter__(self):
    return _SequentialShardIterator(self.path)


class _SequentialShardIterator(grain.DatasetIterator):

  def __init__(self, path: str):
    super().__init__()
    self._path = path
    self._offset = 0
    self._records = None

  def __next__(self) -> tuple[str, bytes]:
    if self._records is None:
      self._records = tfrecord.iter_records(self._path, start=self._offset)
    offset, payload = next(self._records)
    record_start, self._offset = self._offset, offset + len(payload) + 4
    return f"{self._path}: record at byte offset {record_start}", payload

  def get_state(self):
    return {"offset": self._offset}

  def set_state(self, state):
    self._offset = state["offset"]
    self._records = None


def choose_imu_locations(location_mask: np.ndarray, rng: np.random.Generator,
                         config: AugmentConfig, info: records.DatasetInfo) -> np.ndarray:
  """[B, S] real-location mask -> [B] one allowed location per example, uniformly (-1: none)."""
  allowed = np.asarray(location_mask, bool)
  if config.imu_locations != "random":
    names = ((config.imu_locations,) if isinstance(config.imu_locations, str)
             else tuple(config.imu_locations))
    unknown = sorted(set(names) - set(info.imu_locations))
    if unknown:
      raise ValueError(f"unknown IMU locations {unknown}; the dataset has {info.imu_locations}")
    allowed = allowed & np.isin(np.asarray(info.imu_locations), names)[None, :]
  keys = np.where(allowed, rng.random(allowed.shape), -1.0)
  return np.where(allowed.any(axis=1), keys.argmax(axis=1), -1).astype(np.int32)


def augment(batch: dict[str, np.ndarray], rng: np.random.Generator,
            config: AugmentConfig) -> dict[str, np.ndarray]:
  """Modality dropout on a parsed batch (see AugmentConfig)."""
  if config.modality_dropout <= 0:
    return batch
  batch = dict(batch)
  n = len(batch["label"])
  mask = batch["modality_mask"].astype(bool)
  drop = rng.random(mask.shape) < config.modality_dropout
  kept = mask & ~drop
  # Where fewer than two would remain, keep the two present ones with the
  # lowest random keys (i.e. undo the dropout just enough).
  keys = np.where(mask, rng.random(mask.shape), np.inf)
  rank = keys.argsort(axis=1).argsort(axis=1)
  rescue = (kept.sum(axis=1) < 2)[:, None] & mask & (rank < 2)
  new_mask = kept | rescue
  for j, key in enumerate(("imu", "pose", "video", "text_ids")):
    hidden = mask[:, j] & ~new_mask[:, j]
    if hidden.any():
      batch[key] = np.where(hidden.reshape((n,) + (1,) * (batch[key].ndim - 1)),
                            np.zeros((), batch[key].dtype), batch[key])
  batch["text_len"] = np.where(new_mask[:, 3], batch["text_len"], 0).astype(np.int32)
  batch["modality_mask"] = new_mask.astype(np.int32)
  return batch


def parse_and_augment(elements, rng: np.random.Generator, info: records.DatasetInfo,
                      config: AugmentConfig, where_fn) -> dict[str, np.ndarray]:
  """A list of (key, payload) -> one augmented batch; None payloads (skipped
  corrupt records) are left out. The IMU location is chosen before decoding so
  that only that location's samples are copied."""
  elements = [e for e in elements if e[1] is not None]
  choose = None
  if config.imu_locations != "all":
    choose = lambda mask: choose_imu_locations(mask, rng, config, info)
  batch = records.decode_batch(info, [p for _, p in elements],
                               where=lambda i: where_fn(elements[i][0]), imu_location=choose)
  return augment(batch, rng, config)


def make_dataset(data_dir: str, split: str, *, batch_size: int, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None,
                 drop_remainder: bool = True,
                 augment_config: AugmentConfig = AugmentConfig(),
                 process_index: int | None = None, process_count: int | None = None,
                 skip_corrupt: bool = False, shuffle_window: int = 4096,
                 read_threads: int = 2) -> grain.IterDataset:
  """Builds this process's pipeline for one split; `batch_size` is per process.

  Each process reads a disjoint slice of the split (hosts of a pod never see
  the same example in an epoch). Returns an IterDataset; call
  `make_iterator` to add multi-worker prefetch.
  """
  info = records.DatasetInfo.load(data_dir)
  paths = info.shard_paths(data_dir, split)
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  parse = lambda where_fn: (lambda elements, rng: parse_and_augment(
      elements, rng, info, augment_config, where_fn))
  indexed = all(os.path.exists(tfrecord.index_path(p)) for p in paths)
  if indexed:
    source = IndexedShardSource(paths, skip_corrupt=skip_corrupt)
    ds = ShuffledRecordBatches(
        grain.MapDataset.source(source), batch_size=batch_size, seed=seed, shuffle=shuffle,
        process_index=process_index, process_count=process_count, num_epochs=num_epochs,
        drop_remainder=drop_remainder and not skip_corrupt)
    # Elements are whole batches: a couple of reader threads and a short buffer
    # (Grain's defaults, 16 threads and 500 elements, are sized for examples).
    ds = ds.random_map(parse(source.describe), seed=seed).to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads))
    if not skip_corrupt:
      return ds
    # Dropped records make batches short; rebatch restores the exact size.
  else:
    missing = [p for p in paths if not os.path.exists(tfrecord.index_path(p))]
    logging.warning("%d shard(s) of %s have no index (e.g. %s): reading sequentially with a "
                    "window shuffle; build indexes with `python -m mujo_jax.tfrecord SHARD...` "
                    "for global shuffling", len(missing), split, missing[0])
    mine = paths[process_index::process_count]
    if not mine:
      raise ValueError(f"split {split!r} has {len(paths)} unindexed shards, fewer than "
                       f"{process_count} processes; index them or write more shards")
    shards = [SequentialShardDataset(p) for p in mine]
    ds = grain.experimental.InterleaveIterDataset(shards, cycle_length=len(shards))
    if shuffle:
      ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=shuffle_window, seed=seed)
    if num_epochs != 1:
      ds = grain.experimental.RepeatIterDataset(ds, num_epochs=num_epochs)
    ds = ds.batch(batch_size, drop_remainder=False, batch_fn=list)
    ds = ds.random_map(parse(str), seed=seed)
  return grain.experimental.RebatchIterDataset(ds, batch_size=batch_size,
                                              drop_remainder=drop_remainder)


def make_iterator(ds: grain.IterDataset, num_workers: int = 0,
                  per_worker_buffer_size: int = 2) -> grain.DatasetIterator:
  """Starts the pipeline, with `num_workers` prefetch processes if > 0.

  The returned iterator has get_state/set_state and saves with Orbax via
  `grain.checkpoint.CheckpointSave(iterator)`.
  """
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # Grain's workers read absl flags; use their defaults.
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=per_worker_buffer_size))
  return iter(ds)


def to_global_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
                    data_axis: str | tuple[str, ...] = "data") -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax.Arrays sharded along the batch axis.

  Each process passes only its own rows; the global batch is their
  concatenation in process order. Non-numeric fields (clip_id) stay on host.
  """
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axis))
  return {k: (jax.make_array_from_process_local_data(sharding, v)
              if v.dtype != object else v) for k, v in batch.items()}


def iterate_global(iterator: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh,
                   data_axis: str | tuple[str, ...] = "data") -> Iterator[dict[str, jax.Array]]:
  for batch in iterator:
    yield to_global_batch(batch, mesh, data_axis)
