"""The Grain input pipeline: FiMAD shards -> batches of numpy arrays -> global jax.Arrays.

Indexed shards (the normal case; local or gs://, see storage.py):
  random-access source over all shards of a split
  -> a seeded order of all records reshuffled every epoch, cut into global
     batches; this process reads its contiguous part of each (jax.process_index()
     of jax.process_count()), a batch at a time (ShuffledRecordBatches)
  -> read and decoded a batch at a time (DecodedBatches, IndexedShardSource.read_batch):
     a record's first read is whole (CRC per `crc_check`) and fills a per-process
     table of its small fields and array offsets (records.scan_records); later
     reads fetch only the byte ranges the batch needs (one IMU location, not all)
     unless `crc_check="always"`; with `cache_in_memory` the decoded arrays stay
     in RAM and a batch is one gather per field
  -> per-example augmentation, vectorised over the batch (IMU location, modality dropout,
     IMU sensor realism: imu_augment.py)
  -> multi-worker prefetch (each worker keeps its own tables and cache).
Everything before the prefetch is a Grain MapDataset, so the iterator state is an
element index: it checkpoints with Orbax (grain.checkpoint) and resumes exactly,
whatever the CRC or cache mode.

Shards without an index are read sequentially with a window shuffle.

The trainer turns each host-local batch into a global jax.Array sharded over the
mesh's data axis with `to_global_batch`, or `prefetch_to_device` keeps a few
batches already on the devices, ahead of the step.

Corrupt records: by default the first one stops the pipeline with an error
naming its shard, record and byte offset. With skip_corrupt it is logged and
left out, and every batch says how many were: SKIPPED_CORRUPT [B] int32 (an
ordinary per-row field, so it survives worker processes, rebatching and
checkpointing); the trainer sums it and calls check_corrupt_fraction.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from absl import flags
import grain
import jax
import numpy as np

from mujo_jax import imu_augment
from mujo_jax import records
from mujo_jax import shm_pool
from mujo_jax import storage
from mujo_jax import tfrecord
from mujo_jax.modalities import ARRAY_KEYS
from mujo_jax.modalities import MODALITIES

CRC_CHECKS = ("always", "first_pass", "off")
# Per row of a batch: corrupt records skipped in the pipeline element it came from,
# all on that element's first kept row (0 elsewhere). Summed over the batches a
# process consumes: the corrupt records it skipped.
SKIPPED_CORRUPT = "skipped_corrupt"
_MERGE_GAP_BYTES = 512  # ranges of one record closer than this are read as one (field headers)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Per-example augmentation, applied to whole batches with numpy.

  imu_locations: "all" keeps [B, S, T, 6]; "random" picks one real location per
    example; a tuple of names (or one comma-separated string of them) picks one
    of those at random (only among the ones an example really has) -> `imu` [B, T, 6] and `imu_location` [B].
  modality_dropout: probability of hiding each present modality of an example
    (mask set to 0, data zeroed); at least two modalities always stay, so every
    example keeps a contrastive pair.
  imu_augment: sensor-realism augmentation of the IMU that an example still has after
    dropout (rotation on the strap, clock rate, gain, bias, noise; imu_augment.py), on
    either layout ("all": each location draws its own).
  """
  imu_locations: str | tuple[str, ...] = "random"
  modality_dropout: float = 0.0
  imu_augment: imu_augment.ImuAugmentConfig = imu_augment.ImuAugmentConfig()


class IndexedShardSource(grain.sources.RandomAccessDataSource):
  """All records of a list of indexed shards as one random-access sequence.

  Elements are (global index, payload); payload is None for a corrupt record
  when skip_corrupt is set (the record is logged and counted, then dropped).
  Indexes are loaded once, here, and travel with the source when it is pickled
  into Grain's worker processes; shard readers open lazily in each process.
  A batch read (`_getitems`) is one batched range read per shard touched; on
  remote storage its requests go out concurrently (storage.RangeReader: whole
  cached blocks when the split fits `remote_cache_bytes`, else exact ranges).

  `read_batch` decodes a batch directly. What it learns stays in the process
  (each Grain worker has its own): the small fields and array offsets of every
  record read so far, which records had their CRC checked, and with
  `cache_in_memory` their decoded arrays.

  crc_check: "always" reads whole records and checks every read; "first_pass"
    checks a record the first time this process reads it, then reads only the
    byte ranges a batch needs; "off" never checks (first reads are still whole:
    they find the offsets). verify_crc=False is the old spelling of "off".
  cache_in_memory: keep each record's decoded arrays (all IMU locations) after
    its first read, in one preallocated array per field over the whole split,
    so a batch is one gather per field with no parsing and no per-record
    objects. A record then comes from storage (and has its CRC checked) once,
    whatever crc_check says. Only rows this process has read take memory
    (untouched pages are never mapped); since every epoch reshuffles the global
    order, a long run reaches the whole split in every process and worker
    (`cache_bytes`).
  sizes: {shard path: bytes}, when a folder listing already gave them.
  index_sha256: per shard, the digest of its index recorded in dataset_info.json
    (None: unchecked); an index that differs is refused (tfrecord.load_index).
  """

  def __init__(self, paths: Sequence[str], *, verify_crc: bool = True,
               crc_check: str | None = None, cache_in_memory: bool = False,
               skip_corrupt: bool = False, sizes: dict[str, int] | None = None,
               index_sha256: Sequence[str | None] | None = None,
               remote_block_bytes: int = 8 << 20, remote_cache_bytes: int = 256 << 20):
    if not paths:
      raise ValueError("no shards given")
    crc_check = crc_check or ("always" if verify_crc else "off")
    if crc_check not in CRC_CHECKS:
      raise ValueError(f"crc_check {crc_check!r} is not one of {CRC_CHECKS}")
    self.paths = list(paths)
    self.crc_check = crc_check
    self.verify_crc = crc_check != "off"
    self.cache_in_memory = cache_in_memory
    self.skip_corrupt = skip_corrupt
    self._sizes = [None if sizes is None else sizes[p] for p in self.paths]
    digests = [None] * len(self.paths) if index_sha256 is None else list(index_sha256)
    if len(digests) != len(self.paths):
      raise ValueError(f"{len(digests)} index digests for {len(self.paths)} shards")
    self._indexes = [tfrecord.load_index(p, n, sha)
                     for p, n, sha in zip(self.paths, self._sizes, digests)]
    counts = [len(index) for index in self._indexes]
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._block_bytes, self._cache_bytes = remote_block_bytes, remote_cache_bytes
    # Remote blocks are cached only when all shards fit the cache (see storage.RangeReader).
    self.total_bytes = (None if sizes is None else sum(self._sizes))
    self.caches_blocks = self.total_bytes is not None and self.total_bytes <= remote_cache_bytes
    self._reset_process_state()
    self.num_skipped = 0

  def _reset_process_state(self):
    self._readers: dict[int, tfrecord.ShardReader] = {}
    self._cache = None
    self._checked = np.zeros(len(self), bool)  # CRC checked once in this process
    self._tables = None   # _RecordTables, made on the first read_batch
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    for key in ("_readers", "_cache", "_checked", "_tables", "_lock"):
      del state[key]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._reset_process_state()

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __repr__(self) -> str:
    return f"IndexedShardSource({len(self.paths)} shards, {len(self)} records)"

  def _reader(self, shard: int) -> tfrecord.ShardReader:
    reader = self._readers.get(shard)
    if reader is None:
      with self._lock:
        if self._cache is None and self.caches_blocks:
          self._cache = storage.BlockCache(self._cache_bytes)
        reader = self._readers.get(shard) or tfrecord.ShardReader(
            self.paths[shard], verify=self.verify_crc, index=self._indexes[shard],
            size=self._sizes[shard], block_bytes=self._block_bytes, cache=self._cache)
        self._readers[shard] = reader
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

  @property
  def cache_bytes(self) -> int:
    """Bytes of decoded arrays this process holds in its RAM cache."""
    tables = self._tables
    if tables is None or tables.ram is None:
      return 0
    return int(tables.cached.sum()) * sum(a[0].nbytes for a in tables.ram.values())

  def __getitem__(self, index: int) -> tuple[int, bytes | None]:
    return self._getitems([index])[0]

  def _by_shard(self, indices: Sequence[int]) -> dict[int, list[tuple[int, int]]]:
    """{shard: [(position in indices, record in shard)]}."""
    shards, local = self._locate_many(indices)
    by_shard: dict[int, list[tuple[int, int]]] = {}
    for k, (shard, i) in enumerate(zip(shards.tolist(), local)):
      by_shard.setdefault(shard, []).append((k, i))
    return by_shard

  def _getitems(self, indices: Sequence[int]) -> list[tuple[int, bytes | None]]:
    """Whole payloads, CRCs checked as `crc_check` says."""
    indices = [int(i) for i in indices]
    verify = {"always": [True] * len(indices), "off": [False] * len(indices),
              "first_pass": (~self._checked[indices]).tolist()}[self.crc_check]
    payloads: list = [None] * len(indices)
    for shard, located in self._by_shard(indices).items():
      got = self._reader(shard).read_many([i for _, i in located],
                                          verify=[verify[k] for k, _ in located])
      for (k, _), payload in zip(located, got):
        payloads[k] = payload
    out = []
    for index, payload, checked in zip(indices, payloads, verify):
      if isinstance(payload, tfrecord.CorruptRecordError):
        if not self.skip_corrupt:
          raise payload
        self.num_skipped += 1
        logging.warning("skipping corrupt record (%d skipped so far in this process): %s",
                        self.num_skipped, payload)
        payload = None
      elif checked:
        self._checked[index] = True
      out.append((index, payload))
    return out

  def read_batch(self, info: records.DatasetInfo, indices: Sequence[int],
                 imu_location=None, zeros=np.zeros) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Decoded records -> (batch as records.decode_batch makes it, kept [B] bool).

    kept is False for corrupt records skipped (skip_corrupt); the batch holds
    only the kept ones. imu_location(kept, imu_location_mask [B', S]) -> [B']
    picks one location per record (-1: none) before any array is read, so only
    that location's bytes are fetched and copied. zeros(shape, dtype): allocates
    the large arrays (e.g. in shared memory).
    """
    tables = self._record_tables(info)
    ids = np.asarray(indices, np.int64).reshape(-1)
    if self.cache_in_memory:
      whole = ~tables.cached[ids]
    elif self.crc_check == "always":
      whole = np.ones(len(ids), bool)
    else:
      whole = ~tables.known[ids]
    kept = np.ones(len(ids), bool)
    payloads = {}
    if whole.any():
      for k, (_, payload) in zip(np.flatnonzero(whole).tolist(), self._getitems(ids[whole])):
        if payload is None:
          kept[k] = False
        else:
          payloads[k] = payload
      tables.learn(self, ids, payloads)
    ids = ids[kept]
    payloads = {int(j): payloads[k] for j, k in enumerate(np.flatnonzero(kept).tolist())
                if k in payloads}
    batch = {k: v[ids] for k, v in tables.small.items()}
    location = None
    if imu_location is not None:
      location = np.asarray(imu_location(kept, batch["imu_location_mask"]), np.int32)
      batch["imu_location"] = location
      batch["modality_mask"][:, 0] &= location >= 0
    if self.cache_in_memory:
      batch.update(tables.gather(ids, location, zeros))
    else:
      ranges = records.field_ranges(info, tables.offsets[ids], location)
      arrays = records.new_arrays(info, len(ids), location is not None, zeros=zeros)
      records.copy_arrays(info, [[(0, payloads[k])] if k in payloads else None
                                 for k in range(len(ids))], ranges, location is not None, arrays)
      self._read_into(ids, ranges, arrays, [k for k in range(len(ids)) if k not in payloads])
      batch.update(arrays)
    batch["clip_id"] = tables.clip_ids[ids]
    return batch, kept

  def _read_into(self, ids: np.ndarray, ranges: np.ndarray, arrays: dict[str, np.ndarray],
                 todo: list[int]) -> None:
    """Reads the needed byte ranges of records `todo` straight into their batch rows.

    A record's fields closer than _MERGE_GAP_BYTES (pose, text_ids, video: only
    their entry headers lie between) are one scatter read, the headers landing
    in a scratch buffer; a chosen IMU location is another.
    """
    if not todo:
      return
    flat = [memoryview(row.reshape(-1)) for row in records.byte_rows(arrays)]
    widths = [row.shape[1] for row in records.byte_rows(arrays)]
    scratch = memoryview(bytearray(_MERGE_GAP_BYTES))
    starts, counts = ranges[todo, :, 0], ranges[todo, :, 1]
    order = np.argsort(np.where(counts > 0, starts, np.iinfo(np.int64).max), axis=1,
                       kind="stable")
    starts = np.take_along_axis(starts, order, axis=1).tolist()
    counts = np.take_along_axis(counts, order, axis=1).tolist()
    requests = []  # (k, payload offset, [buffers])
    for k, field_order, record_starts, record_counts in zip(todo, order.tolist(), starts, counts):
      end = None
      for j, start, count in zip(field_order, record_starts, record_counts):
        if not count:
          break
        if end is not None and start - end <= _MERGE_GAP_BYTES:
          if start > end:
            requests[-1][2].append(scratch[:start - end])
        else:
          requests.append((k, start, []))
        requests[-1][2].append(flat[j][k * widths[j]:k * widths[j] + count])
        end = start + count
    shards, local = self._locate_many(ids[[k for k, _, _ in requests]])
    for shard in np.unique(shards).tolist():
      here = np.flatnonzero(shards == shard).tolist()
      self._reader(shard).read_into(
          [(local[w], requests[w][1], requests[w][2]) for w in here])

  def _locate_many(self, indices: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(shard [N], record in shard [N]) of global record indices."""
    indices = np.asarray(indices, np.int64)
    if len(indices) and not (0 <= indices.min() and indices.max() < len(self)):
      raise IndexError(f"records outside [0, {len(self)}) asked for")
    shards = np.searchsorted(self._starts, indices, side="right") - 1
    return shards, (indices - self._starts[shards]).tolist()

  def _record_tables(self, info: records.DatasetInfo) -> "_RecordTables":
    if self._tables is None:
      with self._lock:
        if self._tables is None:
          self._tables = _RecordTables(info, len(self), self.cache_in_memory)
    return self._tables


class _RecordTables:
  """Per process: what scan_records found for each record read so far, and the RAM cache.

  Filled in place by concurrent reader threads; a record's row is written
  before its `known`/`cached` flag, and two threads that read the same record
  write the same values.
  """

  def __init__(self, info: records.DatasetInfo, num_records: int, with_cache: bool):
    self.info = info
    self.known = np.zeros(num_records, bool)
    self.offsets = np.full((num_records, len(ARRAY_KEYS)), -1, np.int64)
    widths = {"modality_mask": (len(MODALITIES),),
              "imu_location_mask": (len(info.imu_locations),)}
    self.small = {k: np.zeros((num_records,) + widths.get(k, ()), np.int32)
                  for k in records.SMALL_KEYS}
    self.clip_ids = np.empty(num_records, dtype=object)
    self.cached = np.zeros(num_records, bool)
    # np.zeros: pages are mapped (and zeroed) only when a row is first written.
    self.ram = records.new_arrays(info, num_records, False) if with_cache else None

  def learn(self, source: IndexedShardSource, ids: np.ndarray, payloads: dict[int, bytes]):
    """Records what whole payloads {position in ids: payload} say (and caches them)."""
    new = [k for k in payloads if not self.known[ids[k]]]
    if new:
      rows = ids[new]
      facts = records.scan_records(self.info, [payloads[k] for k in new],
                                   where=lambda j: source.describe(int(rows[j])))
      self.offsets[rows] = facts["offsets"]
      for key in records.SMALL_KEYS:
        self.small[key][rows] = facts[key]
      self.clip_ids[rows] = facts["clip_id"]
      self.known[rows] = True
    if self.ram is not None:
      todo = list(payloads)
      rows = ids[todo]
      arrays = records.copy_arrays(self.info, [[(0, payloads[k])] for k in todo],
                                   records.field_ranges(self.info, self.offsets[rows], None),
                                   False)
      for key, values in arrays.items():
        self.ram[key][rows] = values
      self.cached[rows] = True

  def gather(self, ids: np.ndarray, location: np.ndarray | None,
             zeros=np.zeros) -> dict[str, np.ndarray]:
    """The batch's arrays from the cache: one fancy-index gather per field."""
    out = {}
    for key, values in self.ram.items():
      if key == "imu" and location is not None:   # [N, S, ...]: one location per row
        out[key] = zeros((len(ids),) + values.shape[2:], values.dtype)
        out[key][...] = values[ids, np.maximum(location, 0)]
        out[key][location < 0] = 0
      else:
        out[key] = zeros((len(ids),) + values.shape[1:], values.dtype)
        np.take(values, ids, axis=0, out=out[key])
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


class DecodedBatches(grain.MapDataset):
  """ShuffledRecordBatches' batch k, read and decoded by the source, then augmented.

  The records are read here rather than by ShuffledRecordBatches so that the
  source can fetch only what the batch needs (IMU location chosen first) or
  serve it from its RAM cache. Random draws are PositionalRandom(seed, stream
  positions), so a batch does not depend on process count, workers or mode.
  """

  def __init__(self, parent: ShuffledRecordBatches, source: IndexedShardSource,
               info: records.DatasetInfo, config: AugmentConfig, seed: int):
    super().__init__(parent)
    self._source, self._info, self._config, self._seed = source, info, config, seed

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return (f"DecodedBatches(crc_check={self._source.crc_check}, "
            f"cache_in_memory={self._source.cache_in_memory})")

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < len(self):
      raise IndexError(f"batch {index} outside [0, {len(self)})")
    positions = self._parent.positions(index)
    rngs = []

    def choose(kept, location_mask):
      rngs.append(PositionalRandom(self._seed, positions[kept]))
      return choose_imu_locations(location_mask, rngs[0], self._config, self._info)

    ids = self._parent.record_ids(index)
    # In a worker process the large arrays are decoded straight into the shared
    # memory that carries them to the trainer (shm_pool).
    batch, kept = self._source.read_batch(
        self._info, ids, None if self._config.imu_locations == "all" else choose,
        zeros=np.zeros if _worker_pool is None else _worker_pool.zeros)
    if len(kept) and not kept.any():
      # Its skipped count would have no row to ride on (and a split that is all
      # corrupt would otherwise be read forever).
      raise tfrecord.CorruptRecordError(
          f"all {len(kept)} records of this process's batch {index} are corrupt, e.g. "
          f"{self._source.describe(ids[0])}: too damaged to skip (skip_corrupt)")
    rng = rngs[0] if rngs else PositionalRandom(self._seed, positions[kept])
    return with_skipped_count(augment(batch, rng, self._config), int((~kept).sum()))


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
  """One unindexed shard read front to back, CRCs checked unless `verify` is False.

  Grain's own TFRecordIterDataset does not check CRCs and does not name the file
  in its errors, hence this small reader. State is the byte offset, so it
  checkpoints too.
  """

  def __init__(self, path: str, verify: bool = True):
    super().__init__()
    self.path = path
    self.verify = verify

  def __iter__(self):
    return _SequentialShardIterator(self.path, self.verify)


class _SequentialShardIterator(grain.DatasetIterator):

  def __init__(self, path: str, verify: bool):
    super().__init__()
    self._path = path
    self._verify = verify
    self._offset = 0
    self._records = None

  def __next__(self) -> tuple[str, bytes]:
    if self._records is None:
      self._records = tfrecord.iter_records(self._path, verify=self._verify, start=self._offset)
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
    # A tuple, or a comma-separated string (what a command-line override gives).
    names = (tuple(n.strip() for n in config.imu_locations.split(","))
             if isinstance(config.imu_locations, str) else tuple(config.imu_locations))
    unknown = sorted(set(names) - set(info.imu_locations))
    if unknown:
      raise ValueError(f"unknown IMU locations {unknown}; the dataset has {info.imu_locations}")
    allowed = allowed & np.isin(np.asarray(info.imu_locations), names)[None, :]
  keys = np.where(allowed, rng.random(allowed.shape), -1.0)
  return np.where(allowed.any(axis=1), keys.argmax(axis=1), -1).astype(np.int32)


def augment(batch: dict[str, np.ndarray], rng: np.random.Generator,
            config: AugmentConfig) -> dict[str, np.ndarray]:
  """Modality dropout, then IMU augmentation, on a parsed batch (see AugmentConfig).

  Arrays are changed in place (the batch's arrays are fresh per batch; a copy
  of each would cost as much as decoding them): hidden rows zeroed, the IMU
  overwritten. Dropout draws first, so its draws are the same with or without
  the IMU augmentation, which then touches only the IMU that is still present.
  """
  if config.modality_dropout > 0:
    batch = _modality_dropout(batch, rng, config)
  if config.imu_augment.enabled:
    present = batch["modality_mask"][:, 0] > 0
    if batch["imu"].ndim == 4:   # imu_locations="all": [B, S, T, 6]
      present = present[:, None] & (batch["imu_location_mask"] > 0)
    batch["imu"][...] = imu_augment.apply(batch["imu"], rng, config.imu_augment, present)
  return batch


def _modality_dropout(batch: dict[str, np.ndarray], rng: np.random.Generator,
                      config: AugmentConfig) -> dict[str, np.ndarray]:
  batch = dict(batch)
  mask = batch["modality_mask"].astype(bool)
  drop = rng.random(mask.shape) < config.modality_dropout
  kept = mask & ~drop
  # Where fewer than two would remain, keep the two present ones with the
  # lowest random keys (i.e. undo the dropout just enough).
  keys = np.where(mask, rng.random(mask.shape), np.inf)
  rank = keys.argsort(axis=1).argsort(axis=1)
  rescue = (kept.sum(axis=1) < 2)[:, None] & mask & (rank < 2)
  new_mask = kept | rescue
  for j, key in enumerate(ARRAY_KEYS):
    hidden = mask[:, j] & ~new_mask[:, j]
    if hidden.any():
      batch[key][hidden] = 0
  batch["text_len"] = np.where(new_mask[:, 3], batch["text_len"], 0).astype(np.int32)
  batch["modality_mask"] = new_mask.astype(np.int32)
  return batch


def parse_and_augment(elements, rng: np.random.Generator, info: records.DatasetInfo,
                      config: AugmentConfig, where_fn, seed: int = 0) -> dict[str, np.ndarray]:
  """A list of (key, payload[, stream position]) -> one augmented batch; None payloads
  (skipped corrupt records) are left out. The IMU location is chosen before
  decoding so that only that location's samples are copied. With positions, the
  random draws are PositionalRandom(seed, positions) instead of `rng`."""
  num_elements = len(elements)
  elements = [e for e in elements if e[1] is not None]
  if elements and len(elements[0]) == 3:
    rng = PositionalRandom(seed, [e[2] for e in elements])
  choose = None
  if config.imu_locations != "all":
    choose = lambda mask: choose_imu_locations(mask, rng, config, info)
  batch = records.decode_batch(info, [e[1] for e in elements],
                               where=lambda i: where_fn(elements[i][0]), imu_location=choose)
  return with_skipped_count(augment(batch, rng, config), num_elements - len(elements))


def with_skipped_count(batch: dict[str, np.ndarray], skipped: int) -> dict[str, np.ndarray]:
  """Adds SKIPPED_CORRUPT [B]: `skipped` on row 0, zeros elsewhere."""
  column = np.zeros(len(batch["modality_mask"]), np.int32)
  if skipped:
    if not len(column):
      raise ValueError(f"{skipped} skipped records and no row to count them on")
    column[0] = skipped
  return {**batch, SKIPPED_CORRUPT: column}


class TooManyCorruptRecordsError(tfrecord.CorruptRecordError):
  """More of the records read were corrupt (and skipped) than the run allows."""


def check_corrupt_fraction(skipped: int, read: int, max_fraction: float) -> None:
  """Raises TooManyCorruptRecordsError when more than `max_fraction` of `read` were skipped.

  skipped: corrupt records skipped so far (the sum of SKIPPED_CORRUPT over the
  batches consumed); read: records read so far, skipped ones included (rows
  consumed + skipped). Call it with running totals each log step: skip_corrupt
  is meant for a few damaged records, not for hiding a damaged dataset.
  """
  if not 0 <= max_fraction <= 1:
    raise ValueError(f"max_corrupt_fraction {max_fraction} is outside [0, 1]")
  if skipped < 0 or read < skipped:
    raise ValueError(f"{skipped} corrupt records skipped of {read} read: impossible counts")
  if skipped > max_fraction * read:
    raise TooManyCorruptRecordsError(
        f"{skipped} of the {read} records read were corrupt and skipped "
        f"({skipped / read:.3%}), more than max_corrupt_fraction {max_fraction:.3%}; "
        "the log names each one (\"skipping corrupt record\"): rewrite those shards, "
        "or raise config.data.max_corrupt_fraction")


def make_dataset(data_dir: str, split: str, *, batch_size: int, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None,
                 drop_remainder: bool = True,
                 augment_config: AugmentConfig = AugmentConfig(),
                 process_index: int | None = None, process_count: int | None = None,
                 skip_corrupt: bool = False, shuffle_window: int = 4096,
                 read_threads: int = 1, remote_block_bytes: int = 8 << 20,
                 remote_cache_bytes: int = 256 << 20, crc_check: str = "always",
                 cache_in_memory: bool = False) -> grain.IterDataset:
  """Builds this process's pipeline for one split; `batch_size` is per process.

  data_dir: a local folder or a gs:// URI. Each process reads its disjoint part
  of every global batch (ShuffledRecordBatches). Returns an IterDataset; call
  `make_iterator` to add multi-worker prefetch.
  remote_block_bytes, remote_cache_bytes: read-ahead unit and block cache (per
  process and worker) on remote storage (storage.RangeReader).
  crc_check, cache_in_memory: see IndexedShardSource. Neither changes the
  batches or the iterator state, only the cost. Unindexed shards are read whole
  and sequentially: there crc_check is "off" or checks every read, and there is
  no cache.
  skip_corrupt: leave out records whose CRC or framing is wrong instead of
  stopping (indexed shards only); batches stay full, and SKIPPED_CORRUPT says
  how many were left out (check_corrupt_fraction bounds them). A damaged
  dataset_info.json or index always stops the pipeline.
  """
  if crc_check not in CRC_CHECKS:
    raise ValueError(f"crc_check {crc_check!r} is not one of {CRC_CHECKS}")
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
  digests = [shard.index_sha256 for shard in info.splits[split].shards]
  # An index written with the dataset and gone since is a damaged copy, not a
  # shard from elsewhere: reading on sequentially would silently change the order.
  lost = [p for p, digest in zip(paths, digests) if digest and p in unindexed]
  if lost:
    raise FileNotFoundError(
        f"{tfrecord.index_path(lost[0])} is missing ({len(lost)} index file(s) of split "
        f"{split!r}), though {records.INFO_FILENAME} records its sha256: copy the .index.npy "
        f"files with the shards, or rebuild them with `python -m mujo_jax.tfrecord SHARD...`")
  if not unindexed:
    source = IndexedShardSource(paths, skip_corrupt=skip_corrupt, sizes=sizes,
                                index_sha256=digests,
                                crc_check=crc_check, cache_in_memory=cache_in_memory,
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
    # Elements are whole batches: one background reader thread and a short buffer
    # (Grain's defaults, 16 threads and 500 elements, are sized for examples). A
    # second thread only fights the first for the GIL (README, "Input pipeline
    # throughput"); more cores are used through worker processes.
    ds = DecodedBatches(ds, source, info, augment_config, seed).to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, 2 * read_threads)))
    if not skip_corrupt:
      return ds
    # Dropped records make batches short; rebatch restores the exact size.
  else:
    logging.warning("%d shard(s) of %s have no index (e.g. %s): reading sequentially with a "
                    "window shuffle; build indexes with `python -m mujo_jax.tfrecord SHARD...` "
                    "for global shuffling", len(unindexed), split, unindexed[0])
    if cache_in_memory:
      logging.warning("cache_in_memory needs indexed shards; reading %s without a cache", split)
    mine = paths[process_index::process_count]
    if not mine:
      raise ValueError(f"split {split!r} has {len(paths)} unindexed shards, fewer than "
                       f"{process_count} processes; index them or write more shards")
    shards = [SequentialShardDataset(p, verify=crc_check != "off") for p in mine]
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
    # Batches leave a worker as names of pooled shared-memory segments (shm_pool)
    # and are mapped back to arrays in this process.
    # What Grain itself carries (a pool at its cap) goes by pickle when small.
    ds = grain.experimental.WithOptionsIterDataset(
        ds.map(_send_from_worker), grain.experimental.DatasetOptions(min_shm_size=64 << 10))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=per_worker_buffer_size),
        worker_init_fn=functools.partial(_start_worker, os.getpid()))
    ds = ds.map(shm_pool.open_segments())
  return iter(ds)


# The worker process's pool of shared-memory segments for batch arrays (None in
# the trainer's own process, where batches need no transport).
_worker_pool: shm_pool.WorkerPool | None = None


def _send_from_worker(batch: dict) -> dict:
  """The last step in a worker: large arrays -> SegmentArrays (as they are elsewhere)."""
  return batch if _worker_pool is None else _worker_pool.send(batch)


def _start_worker(parent: int, worker_index: int, worker_count: int) -> None:
  """Grain worker start-up: a segment pool for batches; exit when `parent` is gone.

  A job killed with SIGKILL cannot stop its workers, which would otherwise keep
  running (hundreds of MB each) and hold their shared memory. The parent's pid
  comes from the parent: a worker may start only after it died.
  """
  del worker_index, worker_count
  global _worker_pool
  if shm_pool.available():
    _worker_pool = shm_pool.WorkerPool()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    if _worker_pool is not None:
      _worker_pool.close()
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


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


def prefetch_to_device(iterator: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh,
                       size: int = 2, data_axis: str | tuple[str, ...] = "data",
                       keys: Sequence[str] | None = None) -> "DevicePrefetchIterator":
  """Global batches (as iterate_global) with `size` more already sent to the devices.

  The host-to-device copies of the next batches overlap the current step (jax
  dispatches them asynchronously). Checkpoint the returned iterator, not the
  host one: that one is `size` batches ahead. keys: the fields to keep (default
  all), e.g. the model's inputs.
  """
  return DevicePrefetchIterator(iterator, mesh, size, data_axis, keys)


class DevicePrefetchIterator(grain.DatasetIterator):
  """A deque of `size` batches already on the devices, ahead of the one handed out.

  Each entry carries the host iterator's state right after that batch was
  taken from it, so `get_state()` is the state as of the last batch handed out
  (restoring it continues with the next one) and `set_state` rewinds the host
  iterator and drops what was queued. Saves with grain.checkpoint like any
  Grain iterator.
  """

  def __init__(self, iterator: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh,
               size: int = 2, data_axis: str | tuple[str, ...] = "data",
               keys: Sequence[str] | None = None):
    super().__init__(iterator if isinstance(iterator, grain.DatasetIterator) else ())
    if size < 0:
      raise ValueError(f"prefetch size {size} < 0")
    self._host, self._mesh, self._size, self._axis = iterator, mesh, size, data_axis
    self._keys = None if keys is None else tuple(keys)
    self._queue: collections.deque = collections.deque()
    self._error: Exception | None = None
    self._state = self._host_state()

  def _host_state(self):
    """None for a plain iterator (it has no state to save)."""
    get_state = getattr(self._host, "get_state", None)
    return None if get_state is None else copy.deepcopy(get_state())

  def _fill(self, size: int) -> None:
    """Reads ahead up to `size` batches. An error while reading ahead is kept and
    raised only when the batch it stands for is asked for: a job stopping (e.g. on
    SIGTERM, which also ends Grain's workers) must still get to save the state of
    the batches it did take."""
    while len(self._queue) < size and self._error is None:
      try:
        local = next(self._host)
      except StopIteration:
        return
      except Exception as e:  # pylint: disable=broad-except
        self._error = e
        return
      if self._keys is not None:
        local = {k: local[k] for k in self._keys}
      self._queue.append((to_global_batch(local, self._mesh, self._axis), self._host_state()))

  def __next__(self) -> dict[str, jax.Array]:
    self._fill(max(self._size, 1))
    if not self._queue:
      if self._error is not None:
        raise self._error
      raise StopIteration
    batch, self._state = self._queue.popleft()
    self._fill(self._size)  # the next copies start before this batch's step
    return batch

  def get_state(self):
    return copy.deepcopy(self._state)

  def set_state(self, state) -> None:
    self._queue.clear()
    self._error = None
    self._host.set_state(state)
    self._state = copy.deepcopy(state)

  def close(self) -> None:
    self._queue.clear()
    if hasattr(self._host, "close"):
      self._host.close()
