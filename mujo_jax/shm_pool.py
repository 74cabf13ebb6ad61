"""Batch arrays that cross from Grain worker processes in reused shared memory.

Grain hands numpy arrays from its worker processes to the trainer in shared
memory, one new segment per array per batch. The kernel allocates and zeroes a
new segment's pages one by one as they are first written, which on a virtual
machine costs about as much as decoding the batch (README, "Input pipeline
throughput"). Here a worker decodes a batch's large arrays straight into
segments of its own pool and sends only their names (`SegmentArray`); the
trainer process maps each segment once (`open_segments`) and, when the last
reference to an array it handed out is gone, flags the segment free, so that
the worker writes a later batch into the same pages.

Each segment holds one array followed by a flag byte: 1 from the moment the
worker takes the segment for a batch until the trainer has dropped the array,
0 when the worker may reuse it. Grain's own transport remains the fallback for
a pool at its cap and for platforms without /dev/shm.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import sys
import threading
import weakref
from multiprocessing import shared_memory
from multiprocessing import util

import numpy as np

_SHM_DIR = "/dev/shm"
_FLAG_BYTES = 64          # one cache line after the array
MAX_SEGMENTS = 256        # per worker: beyond, arrays go through Grain's own transport


def available() -> bool:
  """Whether segments can be opened by name here (Linux's /dev/shm)."""
  return sys.platform.startswith("linux") and os.path.isdir(_SHM_DIR)


@dataclasses.dataclass(frozen=True)
class SegmentArray:
  """What crosses the process boundary in place of a pooled array."""
  name: str
  shape: tuple[int, ...]
  dtype: str


class WorkerPool:
  """One worker process's segments. Thread-safe.

  `zeros` hands out arrays in free segments (decode straight into them); `send`
  turns a batch's large arrays into SegmentArrays, copying those that are not
  pooled yet. A pooled array that is dropped instead of sent (e.g. copied by a
  later transformation) frees its segment. The segments are unlinked when the
  worker exits (normally, or through `close()`); the trainer's mappings keep
  their pages until it drops them.
  """

  def __init__(self, max_segments: int = MAX_SEGMENTS):
    self._segments: list[tuple[shared_memory.SharedMemory, int]] = []  # (segment, nbytes)
    self._unsent: dict[int, tuple[shared_memory.SharedMemory, int, weakref.finalize]] = {}
    self._lock = threading.Lock()
    self._max_segments = max_segments
    self._closed = [False]   # shared with the exit finalizer
    self._finalize = util.Finalize(self, _unlink_all, exitpriority=10,
                                   args=(self._lock, self._segments, self._closed))

  def zeros(self, shape, dtype) -> np.ndarray:
    """A zeroed array, in a pooled segment unless the pool is at its cap."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    got = self._take(nbytes) if nbytes else None
    if got is None:
      return np.zeros(shape, dtype)
    shm, new = got
    array = np.ndarray(shape, dtype, buffer=shm.buf)
    if not new:
      array.fill(0)      # a new segment's pages read as zeros already
    address = array.__array_interface__["data"][0]
    done = weakref.finalize(array, self._drop_unsent, address)
    with self._lock:
      self._unsent[address] = (shm, nbytes, done)
    return array

  def send(self, batch: dict) -> dict:
    """batch with its arrays as SegmentArrays (what the worker hands to Grain)."""
    out = {}
    for key, value in batch.items():
      if (isinstance(value, np.ndarray) and value.nbytes and value.flags.c_contiguous
          and not value.dtype.hasobject):
        address = value.__array_interface__["data"][0]
        with self._lock:
          pooled = self._unsent.get(address)
          # Only the whole array: a smaller view of a pooled array is copied out of it.
          if pooled is not None and pooled[1] == value.nbytes:
            del self._unsent[address]
          else:
            pooled = None
        if pooled is not None:
          pooled[2].detach()         # the trainer frees it now
          value = SegmentArray(pooled[0].name, value.shape, value.dtype.str)
        else:
          got = self._take(value.nbytes)
          if got is not None:
            np.copyto(np.ndarray(value.shape, value.dtype, buffer=got[0].buf), value)
            value = SegmentArray(got[0].name, value.shape, value.dtype.str)
      out[key] = value
    return out

  def close(self) -> None:
    """Unlinks every segment; later arrays are plain (a reader thread may still run)."""
    self._finalize()

  def _take(self, nbytes: int) -> tuple[shared_memory.SharedMemory, bool] | None:
    """A free segment of exactly `nbytes`, now flagged in use, and whether it is new."""
    with self._lock:
      for shm, size in self._segments:
        if size == nbytes and shm.buf[nbytes] == 0:
          shm.buf[nbytes] = 1
          return shm, False
      if self._closed[0] or len(self._segments) >= self._max_segments:
        return None
      shm = shared_memory.SharedMemory(create=True, size=nbytes + _FLAG_BYTES)
      shm.buf[nbytes] = 1
      self._segments.append((shm, nbytes))
      return shm, True

  def _drop_unsent(self, address: int) -> None:
    with self._lock:
      pooled = self._unsent.pop(address, None)
    if pooled is not None:
      pooled[0].buf[pooled[1]] = 0


def _unlink_all(lock: threading.Lock, segments: list, closed: list) -> None:
  with lock:
    closed[0] = True
    while segments:
      shm, _ = segments.pop()
      try:
        shm.unlink()
      except FileNotFoundError:
        pass


class open_segments:  # pylint: disable=invalid-name
  """Trainer side, a Grain map: SegmentArray -> the array, read from its segment.

  Each segment is mapped once. The flag is cleared when the array handed out
  (and every view of it, e.g. a zero-copy device buffer) is gone.
  """

  def __init__(self):
    self._maps: dict[str, mmap.mmap] = {}

  def __call__(self, batch: dict) -> dict:
    return {k: self._array(v) if isinstance(v, SegmentArray) else v for k, v in batch.items()}

  def _array(self, ref: SegmentArray) -> np.ndarray:
    segment = self._maps.get(ref.name)
    if segment is None:
      fd = os.open(os.path.join(_SHM_DIR, ref.name.lstrip("/")), os.O_RDWR)
      try:
        segment = self._maps[ref.name] = mmap.mmap(fd, 0)
      finally:
        os.close(fd)
    array = np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=segment)
    flag = np.ndarray((1,), np.uint8, buffer=segment, offset=array.nbytes)
    weakref.finalize(array, flag.fill, 0)
    return array
