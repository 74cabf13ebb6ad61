"""Every flipped byte of a dataset is caught and named; skipped corrupt records are counted."""

import os
import re

import jax
import numpy as np
import pytest

from conftest import example_ids, write_tiny_dataset
from mujo_jax import input_pipeline as ip
from mujo_jax import records
from mujo_jax import tfrecord

ALL = ip.AugmentConfig(imu_locations="all")
SPLITS = ("train", "val")
ERRORS = (tfrecord.CorruptRecordError, records.RecordFormatError)
FLIPS_PER_KIND = 40  # positions per file kind, each flipped to a random byte and by one bit


def _read_dataset(data_dir, crc_check, skip_corrupt=False):
  """Both splits, one epoch, as training and evaluation read them: (ids, skipped)."""
  ids, skipped = [], 0
  for split in SPLITS:
    ds = ip.make_dataset(data_dir, split, batch_size=2, seed=1, num_epochs=1,
                         drop_remainder=False, augment_config=ALL, crc_check=crc_check,
                         skip_corrupt=skip_corrupt, process_index=0, process_count=1)
    for batch in ds:
      ids.extend(example_ids(batch).tolist())
      skipped += int(batch[ip.SKIPPED_CORRUPT].sum())
  return sorted(ids), skipped


def _flip(path, position, xor):
  with open(path, "r+b") as f:
    f.seek(position)
    byte = f.read(1)[0]
    f.seek(position)
    f.write(bytes([byte ^ xor]))


def _xors(rng):
  """A random different byte value and a single-bit flip."""
  return int(rng.integers(1, 256)), 1 << int(rng.integers(8))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
  """10 records in 4 shards; for each shard the start and planted id of each record."""
  data_dir = str(tmp_path_factory.mktemp("small"))
  info = write_tiny_dataset(data_dir, num_clips=(3, 2), windows_per_clip=2, records_per_shard=3)
  layout = {}
  for split in SPLITS:
    for path in info.shard_paths(data_dir, split):
      payloads = [p for _, p in tfrecord.iter_records(path)]
      starts = (tfrecord.load_index(path)[:, 0] - 12).tolist()
      layout[path] = (starts, example_ids(records.decode_batch(info, payloads)).tolist())
  return data_dir, layout


def _shard_positions(layout, rng):
  """Half uniform over all shard bytes, half spread over the parts of a record
  (length, length CRC, payload, payload CRC), so the few framing bytes are hit too."""
  paths = sorted(layout)
  sizes = np.array([os.path.getsize(p) for p in paths])
  out = []
  for _ in range(FLIPS_PER_KIND // 2):
    k = int(rng.choice(len(paths), p=sizes / sizes.sum()))
    out.append((paths[k], int(rng.integers(sizes[k]))))
  for n in range(FLIPS_PER_KIND - len(out)):
    k = int(rng.integers(len(paths)))
    starts = layout[paths[k]][0] + [int(sizes[k])]
    i = int(rng.integers(len(starts) - 1))
    start, end = starts[i], starts[i + 1]
    part = [(0, 8), (8, 12), (12, end - start - 4), (end - start - 4, end - start)][n % 4]
    out.append((paths[k], start + int(rng.integers(*part))))
  return out


def test_every_flipped_shard_byte_is_caught_naming_shard_record_and_offset(small_dataset):
  data_dir, layout = small_dataset
  everything, _ = _read_dataset(data_dir, "always")
  assert len(everything) == 10
  rng = np.random.default_rng(0)
  for path, position in _shard_positions(layout, rng):
    starts, ids = layout[path]
    i = int(np.searchsorted(starts, position, side="right")) - 1
    named = rf"{re.escape(path)}: record {i} at byte offset {starts[i]}\b"
    for xor in _xors(rng):
      _flip(path, position, xor)
      try:
        for crc_check in ("always", "first_pass"):
          with pytest.raises(ERRORS, match=named):
            _read_dataset(data_dir, crc_check)
        # skip_corrupt leaves out that record, and only it, and counts it.
        assert _read_dataset(data_dir, "first_pass", skip_corrupt=True) == (
            sorted(set(everything) - {ids[i]}), 1), (path, position, xor)
      finally:
        _flip(path, position, xor)
  assert _read_dataset(data_dir, "first_pass") == (everything, 0)


@pytest.mark.parametrize("kind", ["index", "info"])
def test_every_flipped_index_or_info_byte_is_caught_naming_the_file(small_dataset, kind):
  """dataset_info.json and the indexes have no CRC; their digests catch even a flip
  that leaves a valid file (another digit, a space for a newline), in every crc mode."""
  data_dir, layout = small_dataset
  everything = _read_dataset(data_dir, "off")
  if kind == "info":
    files = [os.path.join(data_dir, records.INFO_FILENAME)]
  else:
    files = sorted(tfrecord.index_path(p) for p in layout)
  rng = np.random.default_rng(1 if kind == "info" else 2)
  for n in range(FLIPS_PER_KIND):
    path = files[int(rng.integers(len(files)))]
    with open(path, "rb") as f:
      blob = f.read()
    if kind == "info" and n % 2:  # a letter or digit inside the text: valid JSON, other meaning
      position = int(rng.choice([j for j, c in enumerate(blob) if chr(c).isalnum()]))
    else:
      position = int(rng.integers(len(blob)))
    for xor in _xors(rng):
      _flip(path, position, xor)
      try:
        for crc_check in ip.CRC_CHECKS:
          with pytest.raises(ERRORS, match=re.escape(path) + ":"):
            _read_dataset(data_dir, crc_check, skip_corrupt=n % 2 == 1)
      finally:
        _flip(path, position, xor)
  assert _read_dataset(data_dir, "off") == everything


def _corrupt_records(data_dir, shard_records):
  """Garbles the payload of each (train shard number, record) given."""
  info = records.DatasetInfo.load(data_dir)
  for shard, i in shard_records:
    path = info.shard_paths(data_dir, "train")[shard]
    _flip(path, int(tfrecord.load_index(path)[i, 0]) + 20, 0xFF)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skipped_records_are_counted_through_workers_and_device_prefetch(tiny_dataset,
                                                                         num_workers):
  """4 of 60 records corrupt, 2 epochs: the batches' SKIPPED_CORRUPT sums to 8,
  the rows to 112, and a trainer's check stops the run at 5% but not at 10%."""
  _corrupt_records(tiny_dataset, [(0, 1), (3, 6), (5, 0), (8, 2)])
  mesh = jax.make_mesh((8,), ("data",))
  ds = ip.make_dataset(tiny_dataset, "train", batch_size=8, seed=3, num_epochs=2,
                       drop_remainder=False, skip_corrupt=True, crc_check="first_pass",
                       process_index=0, process_count=1)
  it = ip.prefetch_to_device(ip.make_iterator(ds, num_workers=num_workers), mesh,
                             keys=("imu", ip.SKIPPED_CORRUPT))
  skipped, rows, stopped_at = 0, 0, None
  for step, batch in enumerate(it, 1):
    skipped += int(batch[ip.SKIPPED_CORRUPT].sum())  # a global array: the sum over processes
    rows += batch[ip.SKIPPED_CORRUPT].shape[0]
    if step % 5 and rows < 112:  # a log step every 5 batches, and at the end
      continue
    ip.check_corrupt_fraction(skipped, rows + skipped, 0.1)  # at most 4 of 44 per epoch
    if stopped_at is None and skipped > 0.05 * (rows + skipped):
      with pytest.raises(ip.TooManyCorruptRecordsError,
                         match=rf"{skipped} of the {rows + skipped} records read were corrupt"):
        ip.check_corrupt_fraction(skipped, rows + skipped, 0.05)
      stopped_at = rows
  it.close()
  assert (skipped, rows) == (8, 112) and stopped_at is not None


def test_check_corrupt_fraction_bounds():
  ip.check_corrupt_fraction(0, 0, 0.0)
  ip.check_corrupt_fraction(1, 100, 0.01)  # exactly the limit is allowed
  with pytest.raises(ip.TooManyCorruptRecordsError,
                     match=r"2 of the 100 records .*2\.000%.*1\.000%"):
    ip.check_corrupt_fraction(2, 100, 0.01)
  with pytest.raises(ip.TooManyCorruptRecordsError):
    ip.check_corrupt_fraction(1, 1000, 0.0)
  with pytest.raises(ValueError, match="outside"):
    ip.check_corrupt_fraction(0, 10, 1.5)
  with pytest.raises(ValueError, match="impossible"):
    ip.check_corrupt_fraction(11, 10, 0.5)


def test_a_batch_with_no_readable_record_stops_even_when_skipping(tiny_dataset):
  """Its count would have no row to ride on, and an all-corrupt split would spin forever."""
  _corrupt_records(tiny_dataset, [(0, 0), (0, 1)])
  ds = ip.make_dataset(tiny_dataset, "train", batch_size=2, shuffle=False, skip_corrupt=True,
                       augment_config=ALL, process_index=0, process_count=1)
  with pytest.raises(tfrecord.CorruptRecordError,
                     match=r"all 2 records of this process's batch 0 are corrupt, e\.g\. "
                           r".*train-00000\.tfrecord: record 0 at byte offset 0"):
    next(iter(ds))
