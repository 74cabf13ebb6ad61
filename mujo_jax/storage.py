"""One path layer for every file the project reads or writes: local paths or gs:// URIs.

Paths are `etils.epath.Path` (what Orbax uses; gcsfs underneath for gs://), so
the same code reads and writes a local folder or a Cloud Storage bucket. What
epath does not give, and the project needs, is here:

- `atomic_write`: an object is complete or absent. Locally: a temporary file
  renamed into place. On GCS an upload only becomes visible when it finishes,
  so the data is staged in a local temporary file and uploaded in one go; an
  error or a kill before that leaves no object.
- `RangeReader`: reads many (offset, length) ranges of one file. Locally
  `os.pread`; remotely all missing pieces of a call in one concurrent batched
  request (`cat_ranges`): whole blocks (the read-ahead unit) into a per-process
  `BlockCache` when the data fits it, else exactly the ranges asked for.
- `list_sizes`: one listing of a folder with the size of every file.
- `AppendableFile`: a log file appended to (metrics.jsonl, TensorBoard events).
  GCS objects cannot be appended to, so remotely the whole object is rewritten
  on each flush (as TensorFlow's gfile does).

Setting the standard `STORAGE_EMULATOR_HOST` routes every gs:// access to a GCS
emulator: gcsfs reads it itself; tensorstore (Orbax's array storage) is pointed
there through `TENSORSTORE_GCS_HTTP_URL`; and gcsfs's zonal-bucket probe, which
speaks gRPC and waits a minute per bucket against an emulator, is switched off.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import posixpath
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from etils import epath


def route_to_emulator() -> None:
  """Points tensorstore and gcsfs at STORAGE_EMULATOR_HOST when it is set (runs on import)."""
  host = os.environ.get("STORAGE_EMULATOR_HOST")
  if not host:
    return
  if "://" not in host:
    host = "http://" + host
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host)
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


route_to_emulator()

PathLike = str | os.PathLike
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def path(p: PathLike) -> epath.Path:
  return epath.Path(p)


def is_remote(p: PathLike) -> bool:
  return "://" in os.fspath(p)


def absolute(p: PathLike) -> str:
  """A local path made absolute (Orbax wants one); URIs unchanged."""
  return os.fspath(p) if is_remote(p) else os.path.abspath(p)


def join(base: PathLike, *parts: str) -> str:
  return posixpath.join(os.fspath(base), *parts)  # a URI joins like a POSIX path


def exists(p: PathLike) -> bool:
  return epath.Path(p).exists()


def makedirs(p: PathLike) -> None:
  """Creates a folder (and its parents); a no-op on object stores."""
  if not is_remote(p):
    os.makedirs(p, exist_ok=True)


def remove(p: PathLike) -> None:
  epath.Path(p).unlink(missing_ok=True)


def read_bytes(p: PathLike) -> bytes:
  return epath.Path(p).read_bytes()


def read_text(p: PathLike) -> str:
  return epath.Path(p).read_text()


def read_json(p: PathLike) -> Any:
  return json.loads(read_text(p))


def _fs(p: PathLike):
  """The fsspec filesystem behind a URI (gcsfs for gs://)."""
  import fsspec  # pylint: disable=import-outside-toplevel
  return fsspec.core.url_to_fs(os.fspath(p))[0]


@contextlib.contextmanager
def atomic_write(p: PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
  """Yields a file to write; `p` appears complete when the block ends, or not at all."""
  target = os.fspath(p)
  folder = None if is_remote(target) else os.path.dirname(os.path.abspath(target))
  if folder:
    os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(target))
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would have made it, not mkstemp's 0600
    if is_remote(target):
      _fs(target).put_file(tmp, target)
    else:
      os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(p: PathLike, data: bytes) -> None:
  with atomic_write(p, "wb") as f:
    f.write(data)


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode("utf-8"))


def write_json(p: PathLike, value: Any, **kwargs) -> None:
  write_text(p, json.dumps(value, **kwargs))


def list_sizes(folder: PathLike) -> dict[str, int]:
  """{file name: size in bytes} of a folder's files, from one listing."""
  folder = os.fspath(folder)
  if not is_remote(folder):
    with os.scandir(folder) as entries:
      return {e.name: e.stat().st_size for e in entries if e.is_file()}
  fs = _fs(folder)
  return {os.path.basename(e["name"].rstrip("/")): int(e["size"])
          for e in fs.ls(folder, detail=True) if e["type"] == "file"}


class BlockCache:
  """Least-recently-used blocks of remote files, within a byte budget (one per process;
  thread-safe, since Grain reads with several threads)."""

  def __init__(self, max_bytes: int = 256 << 20):
    self.max_bytes = max_bytes
    self._blocks: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
    self._bytes = 0
    self._lock = threading.Lock()

  def get(self, key: tuple[str, int]) -> bytes | None:
    with self._lock:
      data = self._blocks.get(key)
      if data is not None:
        self._blocks.move_to_end(key)
      return data

  def put(self, key: tuple[str, int], data: bytes, keep: int = 0) -> None:
    """Adds a block; evicts the oldest, but never the `keep` newest (those in use)."""
    with self._lock:
      if key in self._blocks:
        self._bytes -= len(self._blocks.pop(key))
      self._blocks[key] = data
      self._bytes += len(data)
      while self._bytes > self.max_bytes and len(self._blocks) > max(keep, 1):
        self._bytes -= len(self._blocks.popitem(last=False)[1])


class RangeReader:
  """Reads (offset, length) ranges of one file; remote ones in one batched call per `read`.

  With a `cache` (shared by the readers of one process), remote reads fetch whole
  aligned blocks of `block_bytes` (the read-ahead unit) that stay until evicted:
  right when the data fits the cache, so each block is fetched once. Without one
  (data larger than any cache: whole blocks would be fetched again and again for
  a record each), exactly the requested ranges are fetched, those less than
  `merge_gap_bytes` apart as one. Either way all requests of a `read` go out
  concurrently in one `cat_ranges` call. `num_requests` counts ranged requests.
  """

  def __init__(self, p: PathLike, size: int | None = None, *, block_bytes: int = 8 << 20,
               cache: BlockCache | None = None, merge_gap_bytes: int = 1 << 20):
    self.path = os.fspath(p)
    self.remote = is_remote(self.path)
    self.num_requests = 0
    if self.remote:
      self._fs = _fs(self.path)
      self.size = int(self._fs.size(self.path)) if size is None else int(size)
      self._block, self._cache, self._gap = block_bytes, cache, merge_gap_bytes
    else:
      self._fd = os.open(self.path, os.O_RDONLY)
      self.size = os.fstat(self._fd).st_size if size is None else int(size)

  def close(self) -> None:
    if not self.remote:
      os.close(self._fd)

  def read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes of each (offset, length); shorter where the file ends early."""
    if not self.remote:
      return [os.pread(self._fd, length, offset) for offset, length in ranges]
    if self._cache is None:
      return self._read_exact(ranges, self._gap)
    needed = sorted({b for offset, length in ranges
                     for b in range(offset // self._block,
                                    (min(offset + length, self.size) - 1) // self._block + 1)})
    blocks = {b: self._cache.get((self.path, b)) for b in needed}
    self._fetch([b for b in needed if blocks[b] is None], blocks)
    return [self._slice(blocks, offset, length) for offset, length in ranges]

  def _read_exact(self, ranges: Sequence[tuple[int, int]], gap: int) -> list[bytes]:
    """Exactly `ranges`, those at most `gap` bytes apart fetched as one request."""
    merged = []   # [start, end, indices of the ranges inside]
    for i in sorted(range(len(ranges)), key=lambda i: ranges[i][0]):
      offset, length = ranges[i]
      end = min(offset + length, self.size)
      if merged and offset - merged[-1][1] <= gap:
        merged[-1][1] = max(merged[-1][1], end)
        merged[-1][2].append(i)
      else:
        merged.append([offset, end, [i]])
    datas = self._cat([m[0] for m in merged], [m[1] for m in merged])
    out = [b""] * len(ranges)
    for (start, _, inside), data in zip(merged, datas):
      for i in inside:
        offset, length = ranges[i]
        out[i] = data[offset - start:offset - start + length]
    return out

  def _cat(self, starts: list[int], ends: list[int]) -> list:
    datas = self._fs.cat_ranges([self.path] * len(starts), starts, ends, on_error="return")
    self.num_requests += len(starts)
    for start, data in zip(starts, datas):
      if isinstance(data, Exception):
        raise OSError(f"{self.path}: reading bytes {start}..: {data}") from data
    return datas

  def _fetch(self, missing: list[int], blocks: dict[int, bytes]) -> None:
    """Fetches whole blocks; consecutive ones (gap 0) go as one request."""
    if not missing:
      return
    datas = self._read_exact([(b * self._block, self._block) for b in missing], gap=0)
    for b, data in zip(missing, datas):
      blocks[b] = data
      self._cache.put((self.path, b), data, keep=len(blocks))

  def _slice(self, blocks: dict[int, bytes], offset: int, length: int) -> bytes:
    end = min(offset + length, self.size)
    first, last = offset // self._block, (end - 1) // self._block
    data = blocks[first] if first == last else b"".join(blocks[b] for b in range(first, last + 1))
    start = offset - first * self._block
    return data[start:start + end - offset]


class AppendableFile:
  """A file that grows by appends and is flushed now and then; local or remote.

  Locally the new bytes are appended. Remotely the whole content (what the object
  held when opened, plus everything appended) is rewritten on each flush.
  """

  def __init__(self, p: PathLike):
    self.path = os.fspath(p)
    self.remote = is_remote(self.path)
    self._pending = bytearray()
    self._content = bytearray()
    if self.remote and exists(self.path):
      self._content += read_bytes(self.path)
    if not self.remote:
      makedirs(os.path.dirname(self.path) or ".")

  def append(self, data: bytes) -> None:
    self._pending += data

  def flush(self) -> None:
    if not self._pending:
      return
    if self.remote:
      self._content += self._pending
      write_bytes(self.path, bytes(self._content))
    else:
      with open(self.path, "ab") as f:
        f.write(self._pending)
    self._pending.clear()
