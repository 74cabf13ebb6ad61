"""The path layer on its own: atomic writes, listings, and remote range reads (fsspec's
in-memory filesystem stands in for a bucket; tests/test_gcs.py uses a real GCS emulator)."""

import os
import stat

import numpy as np
import pytest

from mujo_jax import storage


def test_atomic_write_is_all_or_nothing_locally(tmp_path):
  target = tmp_path / "sub" / "shard.bin"
  with pytest.raises(RuntimeError):
    with storage.atomic_write(target) as f:
      f.write(b"half")
      raise RuntimeError("killed")
  assert not target.exists() and os.listdir(tmp_path / "sub") == []  # no temporary left
  storage.write_bytes(target, b"whole")
  assert target.read_bytes() == b"whole"
  assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~storage._UMASK


def test_list_sizes_and_join_work_alike_for_folders_and_uris(tmp_path):
  (tmp_path / "a.bin").write_bytes(b"123")
  (tmp_path / "dir").mkdir()
  assert storage.list_sizes(tmp_path) == {"a.bin": 3}
  storage.write_bytes("memory://bucket/data/a.bin", b"123")
  assert storage.list_sizes("memory://bucket/data") == {"a.bin": 3}
  assert storage.join("gs://b/data", "x.json") == "gs://b/data/x.json"
  assert storage.absolute("gs://b/data") == "gs://b/data"


@pytest.fixture
def remote_file():
  data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
  storage.write_bytes("memory://bucket/file.bin", data)
  return "memory://bucket/file.bin", data


def test_block_cache_fetches_each_block_once(remote_file):
  path, data = remote_file
  reader = storage.RangeReader(path, block_bytes=1000, cache=storage.BlockCache(1 << 20))
  ranges = [(10, 5), (990, 20), (5000, 2500), (9990, 100)]   # the last runs past the end
  assert reader.read(ranges) == [data[o:o + n] for o, n in ranges]
  # Blocks 0-1 and 5-7 and 9: three runs of consecutive blocks, three requests.
  assert reader.num_requests == 3
  assert reader.read([(500, 600), (7100, 10)]) == [data[500:1100], data[7100:7110]]
  assert reader.num_requests == 3   # all cached


def test_without_a_cache_exact_ranges_are_read_and_near_ones_merged(remote_file):
  path, data = remote_file
  reader = storage.RangeReader(path, merge_gap_bytes=100)
  ranges = [(5000, 10), (10, 5), (50, 10), (9000, 20)]
  assert reader.read(ranges) == [data[o:o + n] for o, n in ranges]
  assert reader.num_requests == 3   # 10 and 50 are 35 bytes apart: one request


def test_block_cache_stays_within_its_budget_but_keeps_blocks_in_use():
  cache = storage.BlockCache(max_bytes=250)
  for b in range(5):
    cache.put(("f", b), b"x" * 100, keep=2)
  assert cache.get(("f", 4)) and cache.get(("f", 3)) and not cache.get(("f", 0))
  cache.put(("g", 0), b"y" * 1000, keep=1)   # larger than the budget, but in use
  assert cache.get(("g", 0))


def test_appendable_file_keeps_what_was_there(tmp_path):
  # Remote objects (rewritten whole on flush): tests/test_gcs.py, metrics.jsonl across a rerun.
  for target in (str(tmp_path / "log.jsonl"),):
    log = storage.AppendableFile(target)
    log.append(b"a\n")
    log.flush()
    log.append(b"b\n")
    log.flush()
    assert storage.read_bytes(target) == b"a\nb\n"
    again = storage.AppendableFile(target)   # a resumed run
    again.append(b"c\n")
    again.flush()
    assert storage.read_bytes(target) == b"a\nb\nc\n"
