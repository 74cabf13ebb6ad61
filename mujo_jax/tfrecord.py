"""TFRecord files with an offset index, readable without TensorFlow.

Framing (what TensorFlow writes and reads) per record:
  uint64 length | uint32 masked_crc32c(length) | payload | uint32 masked_crc32c(payload)
all little-endian. CRC32C comes from `google-crc32c` (C-accelerated). Paths may be
local or gs:// (mujo_jax/storage.py).

Beside each shard `X.tfrecord` we write `X.tfrecord.index.npy`: int64 [N, 2] of
(payload byte offset, payload length). With it a shard is random-access, which is
what global shuffling, deterministic order and exact resumption in Grain need.
`build_index` recreates an index for a shard written by other tools.

The CRCs cover every byte of a shard; an index has no checksum of its own, so
write_shard returns the sha256 of the index bytes it wrote, which the dataset
writer records in dataset_info.json (itself sealed, records.py), and
load_index(sha256=...) refuses an index whose bytes differ from it.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import google_crc32c
import numpy as np

from mujo_jax import storage

_HEADER = struct.Struct("<QI")  # length, masked crc of length
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
INDEX_SUFFIX = ".index.npy"


class CorruptRecordError(IOError):
  """A record whose framing or checksum is wrong; the message names file and offset."""


def crc32c(data: bytes) -> int:
  return google_crc32c.value(data)


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
  """One record as TensorFlow frames it."""
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", masked_crc32c(length)) + payload
          + _FOOTER.pack(masked_crc32c(payload)))


def index_path(shard_path: str) -> str:
  return shard_path + INDEX_SUFFIX


class WrittenShard(NamedTuple):
  num_records: int
  index_sha256: str  # of the index file's bytes, for load_index(sha256=...)


def write_shard(path: str, payloads: Iterable[bytes]) -> WrittenShard:
  """Writes a shard and its index atomically.

  Each file is complete or absent (storage.atomic_write), and the index is
  written last, so a crash never leaves a shard that looks whole.
  """
  offsets = []
  with storage.atomic_write(path) as f:
    pos = 0
    for payload in payloads:
      record = frame(payload)
      f.write(record)
      offsets.append((pos + _HEADER.size, len(payload)))
      pos += len(record)
  return WrittenShard(len(offsets), _write_index(path, offsets))


def _write_index(path: str, offsets) -> str:
  """Writes the index; returns the sha256 (hex) of its bytes."""
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(offsets, dtype=np.int64).reshape(-1, 2))
  storage.write_bytes(index_path(path), buffer.getvalue())
  return hashlib.sha256(buffer.getvalue()).hexdigest()


def index_sha256(path: str) -> str:
  """The sha256 (hex) of the stored index of shard `path`, as write_shard returns it."""
  return hashlib.sha256(storage.read_bytes(index_path(path))).hexdigest()


def iter_records(path: str, *, verify: bool = True,
                 start: int = 0) -> Iterator[tuple[int, bytes]]:
  """Sequentially yields (payload offset, payload) of the records from byte `start` on."""
  file = storage.path(path)
  size = file.stat().length
  with file.open("rb") as f:
    f.seek(start)
    pos = start
    while pos < size:
      header = f.read(_HEADER.size)
      if len(header) < _HEADER.size:
        raise CorruptRecordError(
            f"{path}: truncated record header at byte offset {pos} "
            f"(file is {size} bytes)")
      length, length_crc = _HEADER.unpack(header)
      if verify and masked_crc32c(header[:8]) != length_crc:
        raise CorruptRecordError(
            f"{path}: record at byte offset {pos}: bad length checksum")
      payload = f.read(length)
      footer = f.read(_FOOTER.size)
      if len(payload) < length or len(footer) < _FOOTER.size:
        raise CorruptRecordError(
            f"{path}: truncated record at byte offset {pos}: header says "
            f"{length} payload bytes, file ends at {size}")
      if verify and masked_crc32c(payload) != _FOOTER.unpack(footer)[0]:
        raise CorruptRecordError(
            f"{path}: record at byte offset {pos}: bad payload checksum")
      yield pos + _HEADER.size, payload
      pos += _HEADER.size + length + _FOOTER.size


def build_index(path: str) -> WrittenShard:
  """Scans a shard (checking every CRC) and writes its index."""
  offsets = [(off, len(p)) for off, p in iter_records(path)]
  return WrittenShard(len(offsets), _write_index(path, offsets))


def load_index(path: str, size: int | None = None, sha256: str | None = None) -> np.ndarray:
  """The [N, 2] (offset, length) index of a shard, checked against its size.

  size: the shard's size in bytes when already known (from a folder listing).
  sha256: the digest write_shard returned for it (dataset_info.json keeps it);
    an index whose bytes differ is refused: a flipped offset or length would
    otherwise read the wrong bytes, or the right bytes as a different record.
  """
  ipath = index_path(path)
  try:
    blob = storage.read_bytes(ipath)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{path} has no index {ipath}; build one with "
        f"`python -m mujo_jax.tfrecord {path}` or read it sequentially") from None
  if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
    raise CorruptRecordError(
        f"{ipath}: sha256 {hashlib.sha256(blob).hexdigest()} is not the {sha256} recorded "
        "for it when the dataset was written: the index is damaged or was replaced")
  try:
    index = np.load(io.BytesIO(blob), allow_pickle=False)
  except ValueError as e:
    raise CorruptRecordError(f"{ipath}: not a .npy offset index: {e}") from e
  if index.ndim != 2 or index.shape[1] != 2:
    raise CorruptRecordError(f"{ipath}: expected an [N, 2] offset index, got {index.shape}")
  size = storage.path(path).stat().length if size is None else size
  if len(index) and index[-1, 0] + index[-1, 1] + _FOOTER.size > size:
    raise CorruptRecordError(
        f"{path}: truncated shard: its index says record {len(index) - 1} ends at "
        f"byte {index[-1, 0] + index[-1, 1] + _FOOTER.size}, the file has {size} bytes")
  return index


class ShardReader:
  """Random access to the records of one indexed shard, CRCs checked on read
  (`verify`; per call in read_many), or to byte ranges of payloads (read_ranges,
  read_into).

  index, size: the shard's offset index and byte size when already loaded;
  remote shards are read through storage.RangeReader's block cache.
  """

  def __init__(self, path: str, *, verify: bool = True, index: np.ndarray | None = None,
               size: int | None = None, **range_reader_options):
    self.path = path
    self.index = load_index(path, size) if index is None else index
    # Python ints: reading a record should not pay for numpy scalar conversions.
    self._offsets = self.index[:, 0].tolist()
    self._lengths = self.index[:, 1].tolist()
    self.verify = verify
    self._file = storage.RangeReader(path, size, **range_reader_options)
    self._fd = None if self._file.remote else os.open(path, os.O_RDONLY)

  def __len__(self) -> int:
    return len(self._offsets)

  @property
  def num_requests(self) -> int:
    return self._file.num_requests

  def close(self):
    self._file.close()
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def describe(self, i: int) -> str:
    return f"{self.path}: record {i} at byte offset {self._offsets[i] - _HEADER.size}"

  def read(self, i: int) -> bytes:
    """Payload of record i; raises CorruptRecordError naming shard and offset."""
    payload = self.read_many([i])[0]
    if isinstance(payload, CorruptRecordError):
      raise payload
    return payload

  def read_many(self, indices: Sequence[int], verify: Sequence[bool] | None = None
                ) -> list[bytes | CorruptRecordError]:
    """Payloads of several records in one batched read; a corrupt record comes
    back as its CorruptRecordError (the caller decides: stop or skip).

    verify: per record, whether to check its CRCs (default: self.verify for all).
    The framing (length against the index) is always checked.
    """
    ranges = [(self._offsets[i] - _HEADER.size, _HEADER.size + self._lengths[i] + _FOOTER.size)
              for i in indices]
    if verify is None:
      verify = [self.verify] * len(ranges)
    out = []
    for i, blob, check in zip(indices, self._file.read(ranges), verify):
      try:
        out.append(self._check(i, blob, check))
      except CorruptRecordError as e:
        out.append(e)
    return out

  def read_ranges(self, requests: Sequence[tuple[int, int, int]]) -> list[bytes]:
    """Parts of payloads, no CRC check (that needs the whole record): for each
    (record, offset in its payload, byte count) the bytes, in one batched read."""
    ranges = []
    for i, offset, count in requests:
      if offset < 0 or offset + count > self._lengths[i]:
        raise CorruptRecordError(f"{self.describe(i)}: bytes {offset}..{offset + count} asked "
                                 f"for, the payload has {self._lengths[i]}")
      ranges.append((self._offsets[i] + offset, count))
    blobs = self._file.read(ranges)
    for (i, _, count), blob in zip(requests, blobs):
      if len(blob) != count:
        raise CorruptRecordError(f"{self.describe(i)}: truncated shard")
    return blobs

  def read_into(self, requests: Sequence[tuple[int, int, Sequence[memoryview]]]) -> None:
    """Scatter reads, no CRC check: for each (record, offset in its payload, buffers)
    the payload bytes from that offset on fill the buffers (1-D uint8 memoryviews)
    one after another.

    Locally one `os.preadv` per request, straight into the caller's arrays (no
    intermediate bytes); remotely one batched read_ranges, then copies.
    """
    lengths = [sum(map(len, buffers)) for _, _, buffers in requests]  # 1-D byte views
    if self._fd is None:
      blobs = self.read_ranges([(i, offset, n) for (i, offset, _), n in zip(requests, lengths)])
    for k, ((i, offset, buffers), n) in enumerate(zip(requests, lengths)):
      if offset < 0 or offset + n > self._lengths[i]:
        raise CorruptRecordError(f"{self.describe(i)}: bytes {offset}..{offset + n} asked "
                                 f"for, the payload has {self._lengths[i]}")
      if self._fd is not None:
        got = os.preadv(self._fd, buffers, self._offsets[i] + offset)
        if got != n:
          raise CorruptRecordError(f"{self.describe(i)}: truncated shard")
        continue
      pos = 0
      for buffer in buffers:
        buffer[:] = blobs[k][pos:pos + buffer.nbytes]
        pos += buffer.nbytes

  def _check(self, i: int, blob: bytes, verify: bool) -> bytes:
    length = self._lengths[i]
    if len(blob) != _HEADER.size + length + _FOOTER.size:
      raise CorruptRecordError(f"{self.describe(i)}: truncated shard")
    stored_length, length_crc = _HEADER.unpack_from(blob)
    if stored_length != length:
      raise CorruptRecordError(
          f"{self.describe(i)}: length {stored_length} disagrees with the index ({length})")
    payload = blob[_HEADER.size:_HEADER.size + length]
    if verify:
      if masked_crc32c(blob[:8]) != length_crc:
        raise CorruptRecordError(f"{self.describe(i)}: bad length checksum")
      if masked_crc32c(payload) != _FOOTER.unpack_from(blob, _HEADER.size + length)[0]:
        raise CorruptRecordError(f"{self.describe(i)}: bad payload checksum")
    return payload


def main(argv: Sequence[str]) -> None:
  """`python -m mujo_jax.tfrecord SHARD...` builds indexes for existing shards."""
  for path in argv[1:]:
    written = build_index(path)
    print(f"{path}: indexed {written.num_records} records, index sha256 {written.index_sha256}")


if __name__ == "__main__":
  import sys
  main(sys.argv)
