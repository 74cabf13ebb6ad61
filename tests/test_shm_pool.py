"""Worker -> trainer batch transport in reused shared memory (mujo_jax/shm_pool.py)."""

import gc
import os

import numpy as np
import pytest

from conftest import example_ids
from mujo_jax import input_pipeline as ip
from mujo_jax import shm_pool

pytestmark = pytest.mark.skipif(not shm_pool.available(), reason="needs Linux /dev/shm")


def _segments() -> set[str]:
  return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


def _flag(pool, name):
  (shm, nbytes), = [(s, n) for s, n in pool._segments if s.name == name]  # pylint: disable=protected-access
  return shm.buf[nbytes]


def test_round_trip_flags_and_reuse():
  pool, opened = shm_pool.WorkerPool(), shm_pool.open_segments()
  try:
    a = pool.zeros((4, 3), np.float16)
    assert not a.any()
    a[...] = np.arange(12).reshape(4, 3)
    sent = pool.send({"a": a, "ids": np.array(["x"], dtype=object)})
    ref = sent["a"]
    assert isinstance(ref, shm_pool.SegmentArray) and sent["ids"].dtype == object
    del a
    gc.collect()
    assert _flag(pool, ref.name) == 1          # sent: the trainer owns it now
    got = opened(sent)["a"]
    np.testing.assert_array_equal(got, np.arange(12).reshape(4, 3))
    view = got[1:]
    del got
    gc.collect()
    assert _flag(pool, ref.name) == 1          # a view still reads it
    b = pool.zeros((2, 3), np.float16)          # another size: a new segment
    assert pool.send({"b": b})["b"].name != ref.name
    del view
    gc.collect()
    assert _flag(pool, ref.name) == 0
    c = pool.zeros((4, 3), np.float16)          # same size: the same pages, zeroed
    assert not c.any()
    assert pool.send({"c": c})["c"].name == ref.name
  finally:
    pool.close()


def test_dropped_unsent_arrays_free_their_segment_and_foreign_arrays_are_copied():
  pool, opened = shm_pool.WorkerPool(), shm_pool.open_segments()
  try:
    a = pool.zeros((8,), np.int32)
    name = pool._segments[0][0].name  # pylint: disable=protected-access
    del a                                          # e.g. copied by a later step
    gc.collect()
    assert _flag(pool, name) == 0
    foreign = np.arange(8, dtype=np.int32)
    sent = pool.send({"x": foreign, "part": foreign[:4]})
    assert sent["x"].name == name                  # the free segment, copied into
    assert isinstance(sent["part"], shm_pool.SegmentArray)
    got = opened(sent)
    np.testing.assert_array_equal(got["x"], foreign)
    np.testing.assert_array_equal(got["part"], foreign[:4])
  finally:
    pool.close()


def test_at_the_cap_arrays_stay_plain():
  pool = shm_pool.WorkerPool(max_segments=1)
  try:
    kept = pool.zeros((4,), np.float32)
    assert isinstance(pool.send({"a": kept})["a"], shm_pool.SegmentArray)
    other = pool.zeros((4,), np.float32)
    assert type(other) is np.ndarray and not other.any()  # pylint: disable=unidiomatic-typecheck
    assert pool.send({"b": other})["b"] is other           # left to Grain's transport
  finally:
    pool.close()


def test_close_unlinks_every_segment():
  before = _segments()
  pool = shm_pool.WorkerPool()
  pool.send({"a": pool.zeros((16,), np.float32), "b": np.ones(4)})
  assert len(_segments() - before) == 2
  pool.close()
  assert _segments() - before == set()


def test_worker_batches_held_by_the_trainer_are_never_overwritten(tiny_dataset):
  """The worker reuses a segment only after the trainer dropped its array: batches
  kept alive stay equal to those read without workers, batches dropped at once
  recycle a handful of segments, and nothing is left in /dev/shm afterwards."""
  before = _segments()

  def batches(num_workers, n, keep):
    ds = ip.make_dataset(tiny_dataset, "train", batch_size=6, seed=2, process_index=0,
                         process_count=1, augment_config=ip.AugmentConfig(
                             imu_locations="random", modality_dropout=0.3))
    it = ip.make_iterator(ds, num_workers=num_workers)
    out, mappings = [], []
    for _ in range(n):
      batch = next(it)
      mappings.append(batch["pose"].base)
      out.append(batch if keep else {k: v.copy() for k, v in batch.items()})
    it.close()
    return out, len({id(m) for m in mappings})

  reference, _ = batches(0, 30, keep=True)
  held, _ = batches(1, 30, keep=True)
  for want, got in zip(reference, held):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  np.testing.assert_array_equal(example_ids(held[-1]), example_ids(reference[-1]))
  dropped, distinct = batches(1, 30, keep=False)
  for want, got in zip(reference, dropped):
    np.testing.assert_array_equal(got["video"], want["video"])
  assert distinct <= 12, f"{distinct} segments for 30 batches: not reused"
  del held, reference, dropped
  gc.collect()
  assert _segments() - before == set()
