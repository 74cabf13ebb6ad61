"""The Grain input pipeline: FiMAD shards -> batches of numpy arrays -> global jax.Arrays.

Indexed shards (the normal case; local or gs://, see storage.py):
  random-access source over all shards of a split
  -> a seeded order of all records reshuffled every epoch, cut into global
     batches; this process reads its contiguous part of each (jax.process_index()
     of jax.process_count()), a batch at a time (ShuffledRecordBatches)
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
from mujo_jax import storage
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
  Indexes are loaded once, here, and travel with the source when it is pickled
  into Grain's worker processes; shard readers open lazily in each process.
  A batch read (`_getitems`) is one batched range read per shard touched; on
  remote storage its requests go out concurrently (storage.RangeReader: whole
  cached blocks when the split fits `remote_cache_bytes`, else exact ranges).

  sizes: {shard path: bytes}, when a folder listing already gave them.
  """

  def __init__(self, paths: Sequence[str], *, verify_crc: bool = True,
               skip_corrupt: bool = False, sizes: dict[str, int] | None = None,
               remote_block_bytes: int = 8 << 20, remote_cache_bytes: int = 256 << 20):
    if not paths:
      raise ValueError("no shards given")
    self.paths = list(paths)
    self.verify_crc = verify_crc
    self.skip_corrupt = skip_corrupt
    self._sizes = [None if sizes is None else sizes[p] for p in self.paths]
    self._indexes = [tfrecord.load_index(p, n) for p, n in zip(self.paths, self._sizes)]
    counts = [len(index) for index in self._indexes]
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._block_bytes, self._cache_bytes = remote_block_bytes, remote_cache_bytes
    # Remote blocks are cached only when all shards fit the cache (see storage.RangeReader).
    self.total_bytes = (None if sizes is None else sum(self._sizes))
    self.caches_blocks = self.total_bytes is not None and self.total_bytes <= remote_cache_bytes
    self._readers: dict[int, tfrecord.ShardReader] = {}
    self._cache = None
    self.num_skipped = 0

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_readers"], state["_cache"] = {}, None
    return state

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __repr__(self) -> str:
    return f"IndexedShardSource({len(self.paths)} shards, {len(self)} records)"

  def _reader(self, shard: int) -> tfrecord.ShardReader:
    reader = self._readers.get(shard)
    if reader is None:
      if self._cache is None and self.caches_blocks:
        self._cache = storage.BlockCache(self._cache_bytes)
      reader = self._readers[shard] = tfrecord.ShardReader(
          self.paths[shard], verify=self.verify_crc, index=self._indexes[shard],
          size=self._sizes[shard], block_bytes=self._block_bytes, cache=self._cache)
    return reader

  def _locate(self, index: int) -> tuple[int, int]:
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    shard = int(np.searchsorted(self._starts, index, side="right")) - 1
    return shard, index - int(self._starts[shard])

  def describe(self, index: int) -> str:
    shard, i = self._locate(index)
    return self._reader(shard).describe(i)

  @property
  def num_requests(self) -> int:
    """Remote read requests made by this process's readers so far."""
    return sum(r.num_requests for r in self._readers.values())

  def __getitem__(self, index: int) -> tuple[int, bytes | None]:
    return self._getitems([index])[0]

  def _getitems(self, indices: Sequence[int]) -> list[tuple[int, bytes | None]]:
    located = [self._locate(int(i)) for i in indices]
    by_shard: dict[int, list[int]] = {}
    for k, (shard, _) in enumerate(located):
      by_shard.setdefault(shard, []).append(k)
    payloads: list = [None] * len(indices)
    for shard, ks in by_shard.items():
      reader = self._reader(shard)
      for k, payload in zip(ks, reader.read_many([located[k][1] for k in ks])):
        payloads[k] = payload
    out = []
    for index, payload in zip(indices, payloads):
      if isinstance(payload, tfrecord.CorruptRecordError):
        if not self.skip_corrupt:
          raise payload
        self.num_skipped += 1
        logging.warning("skipping corrupt record (%d skipped so far in this process): %s",
                        self.num_skipped, payload)
        payload = None
      out.append((index, payload))
    return out


class ShuffledRecordBatches(grain.MapDataset):
  """This process's part of each global batch of raw records, reshuffled every epoch.

  The stream is the same for any number of processes: position q of epoch e is
  record `perm_e[q]`, perm_e a permutation of all records seeded by (seed, e),
  and global batch k is positions [k * G, (k + 1) * G) with G = batch_size *
  process_count. Process p's element k is the contiguous part
  [k * G + p * batch_size, k * G + (p + 1) * batch_size) of it, a list of
  (record id, payload, stream position). So the processes read disjoint slices whose union is the
  epoch, and the global batch (their rows in process order, as to_global_batch
  lays them out) is what one process reading batches of G would see: a run on
  2 hosts trains on exactly the batches of a run on 1. Batches run across epoch
  boundaries; with num_epochs and drop_remainder=False the last global batch is
  short, and a process's part of it may be empty.

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
    self._num = len(parent)
    global_batch = batch_size * process_count
    if self._num < (global_batch if drop_remainder else 1):
      raise ValueError(f"{self._num} records are fewer than one global batch of {global_batch} "
                       f"({process_count} process(es) x {batch_size})")
    self._batch_size, self._seed, self._shuffle = batch_size, seed, shuffle
    self._global_batch, self._offset = global_batch, process_index * batch_size
    self._num_records = None if num_epochs is None else num_epochs * self._num
    self._drop_remainder = drop_remainder
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    if self._num_records is None:
      return sys.maxsize
    whole, rest = divmod(self._num_records, self._global_batch)
    return whole + int(bool(rest) and not self._drop_remainder)

  def __str__(self) -> str:
    return f"ShuffledRecordBatches(batch_size={self._batch_size}, seed={self._seed})"

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      if len(self._orders) >= 2:
        self._orders.pop(min(self._orders))
      order = np.arange(self._num, dtype=np.int64)
      if self._shuffle:
        order = np.random.default_rng([self._seed, epoch]).permutation(self._num)
      self._orders[epoch] = order
    return self._orders[epoch]

  def positions(self, index: int) -> np.ndarray:
    """Stream positions of this process's part of global batch `index`."""
    start = index * self._global_batch + self._offset
    stop = start + self._batch_size
    if self._num_records is not None:
      start, stop = min(start, self._num_records), min(stop, self._num_records)
    return np.arange(start, stop, dtype=np.int64)

  def record_ids(self, index: int) -> list[int]:
    epoch, position = np.divmod(self.positions(index), self._num)
    ids = np.empty_like(position)
    for e in np.unique(epoch):
      here = epoch == e
      ids[here] = self._order(int(e))[position[here]]
    return ids.tolist()

  def __getitem__(self, index):
    """[(record id, payload, stream position)] of this process's part of batch `index`."""
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < len(self):
      raise IndexError(f"batch {index} outside [0, {len(self)})")
    records_ = self._parent._getitems(self.record_ids(index))  # pylint: disable=protected-access
    return [(i, p, q) for (i, p), q in zip(records_, self.positions(index).tolist())]


class PositionalRandom:
  """Uniform draws keyed by each example's stream position and the seed, not by how
  the batch was cut: a process's part of a global batch draws exactly what a
  one-process run draws for the same rows (so 2 hosts train on what 1 host does).

  Counter-based (splitmix64 of seed, call number, position and column) and
  vectorised; `random(shape)` with shape[0] = the batch, like numpy's Generator.
  """

  def __init__(self, seed: int, positions: Sequence[int]):
    self._seed = np.uint64(seed % 2**64)
    self._positions = np.asarray(positions, np.uint64)
    self._calls = 0

  def random(self, shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] != len(self._positions):
      raise ValueError(f"{shape[0]} rows asked for, the batch has {len(self._positions)}")
    self._calls += 1
    width = int(np.prod(shape[1:], dtype=np.int64))
    with np.errstate(over="ignore"):
      key = _splitmix64(self._seed ^ _splitmix64(np.uint64(self._calls)))
      x = _splitmix64(key ^ _splitmix64(self._positions))[:, None] + np.arange(
          width, dtype=np.uint64)
      x = _splitmix64(x)
    return ((x >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(shape)


def _splitmix64(z):
  z = z + np.uint64(0x9E3779B97F4A7C15)
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


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
                      config: AugmentConfig, where_fn, seed: int = 0) -> dict[str, np.ndarray]:
  """A list of (key, payload[, stream position]) -> one augmented batch; None payloads
  (skipped corrupt records) are left out. The IMU location is chosen before
  decoding so that only that location's samples are copied. With positions, the
  random draws are PositionalRandom(seed, positions) instead of `rng`."""
  elements = [e for e in elements if e[1] is not None]
  if elements and len(elements[0]) == 3:
    rng = PositionalRandom(seed, [e[2] for e in elements])
  choose = None
  if config.imu_locations != "all":
    choose = lambda mask: choose_imu_locations(mask, rng, config, info)
  batch = records.decode_batch(info, [e[1] for e in elements],
                               where=lambda i: where_fn(elements[i][0]), imu_location=choose)
  return augment(batch, rng, config)


def make_dataset(data_dir: str, split: str, *, batch_size: int, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None,
                 drop_remainder: bool = True,
                 augment_config: AugmentConfig = AugmentConfig(),
                 process_index: int | None = None, process_count: int | None = None,
                 skip_corrupt: bool = False, shuffle_window: int = 4096,
                 read_threads: int = 2, remote_block_bytes: int = 8 << 20,
                 remote_cache_bytes: int = 256 << 20) -> grain.IterDataset:
  """Builds this process's pipeline for one split; `batch_size` is per process.

  data_dir: a local folder or a gs:// URI. Each process reads its disjoint part
  of every global batch (ShuffledRecordBatches). Returns an IterDataset; call
  `make_iterator` to add multi-worker prefetch.
  remote_block_bytes, remote_cache_bytes: read-ahead unit and block cache (per
  process and worker) on remote storage (storage.RangeReader).
  """
  info = records.DatasetInfo.load(data_dir)
  paths = info.shard_paths(data_dir, split)
  listing = storage.list_sizes(data_dir)  # one listing: which shards have indexes, sizes
  sizes = {p: listing.get(os.path.basename(p)) for p in paths}
  absent = [p for p, n in sizes.items() if n is None]
  if absent:
    raise FileNotFoundError(f"{len(absent)} shard(s) of split {split!r} listed in "
                            f"{records.INFO_FILENAME} are missing from {data_dir}, e.g. {absent[0]}")
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  parse = lambda where_fn: (lambda elements, rng: parse_and_augment(
      elements, rng, info, augment_config, where_fn, seed))
  unindexed = [p for p in paths if os.path.basename(tfrecord.index_path(p)) not in listing]
  if not unindexed:
    source = IndexedShardSource(paths, skip_corrupt=skip_corrupt, sizes=sizes,
                                remote_block_bytes=remote_block_bytes,
                                remote_cache_bytes=remote_cache_bytes)
    if storage.is_remote(data_dir) and not source.caches_blocks:
      logging.warning(
          "split %s is %.0f MiB, more than the block cache (%.0f MiB, config.data."
          "remote_cache_mb): each batch fetches its records' byte ranges (one concurrent "
          "call, adjacent records merged) instead of caching whole blocks", split,
          source.total_bytes / 2**20, remote_cache_bytes / 2**20)
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
    logging.warning("%d shard(s) of %s have no index (e.g. %s): reading sequentially with a "
                    "window shuffle; build indexes with `python -m mujo_jax.tfrecord SHARD...` "
                    "for global shuffling", len(unindexed), split, unindexed[0])
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
