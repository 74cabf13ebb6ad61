import collections
import dataclasses
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import example_ids
from conftest import tiny_info
from mujo_jax import imu_augment
from mujo_jax import input_pipeline as ip
from mujo_jax import records
from mujo_jax import tfrecord

ALL = ip.AugmentConfig(imu_locations="all")
TRAIN_IDS = {c * 100 + w for c in range(12) for w in range(5)}


def _ids(data_dir, n_batches, batch_size=6, num_workers=0, **kw):
  kw.setdefault("augment_config", ALL)
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  ds = ip.make_dataset(data_dir, "train", batch_size=batch_size, **kw)
  it = ip.make_iterator(ds, num_workers=num_workers)
  return np.stack([example_ids(next(it)) for _ in range(n_batches)])


def test_epochs_cover_split_and_reshuffle(tiny_dataset):
  ids = _ids(tiny_dataset, 20, seed=3)
  first, second = ids[:10].ravel(), ids[10:].ravel()
  assert set(first) == TRAIN_IDS and set(second) == TRAIN_IDS
  assert len(first) == len(set(first))
  assert (first != second).any()


def test_shuffle_is_deterministic_per_seed(tiny_dataset):
  np.testing.assert_array_equal(_ids(tiny_dataset, 5, seed=7), _ids(tiny_dataset, 5, seed=7))
  assert (_ids(tiny_dataset, 5, seed=7) != _ids(tiny_dataset, 5, seed=8)).any()
  unshuffled = _ids(tiny_dataset, 2, shuffle=False).ravel()
  np.testing.assert_array_equal(unshuffled, sorted(TRAIN_IDS)[:12])


def test_worker_processes_give_the_same_batches(tiny_dataset):
  np.testing.assert_array_equal(_ids(tiny_dataset, 6, seed=1, num_workers=2),
                                _ids(tiny_dataset, 6, seed=1))


def test_processes_read_disjoint_slices_that_cover_the_data(tiny_dataset):
  per_process = [set(_ids(tiny_dataset, 6, batch_size=5, seed=0, process_index=i,
                          process_count=2).ravel()) for i in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == 30
  assert not per_process[0] & per_process[1]
  assert per_process[0] | per_process[1] == TRAIN_IDS


@pytest.mark.parametrize("process_count", [2, 3])
def test_process_parts_concatenate_to_the_single_process_batches(tiny_dataset, process_count):
  """A run on N hosts trains on exactly the global batches of a run on one."""
  single = _ids(tiny_dataset, 8, batch_size=6 * process_count, seed=5)
  parts = [_ids(tiny_dataset, 8, batch_size=6, seed=5, process_index=i,
                process_count=process_count) for i in range(process_count)]
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), single)


def test_random_augmentation_does_not_depend_on_the_process_count(tiny_dataset):
  """IMU location and modality dropout are drawn per stream position, not per local batch."""
  augment = ip.AugmentConfig(imu_locations="random", modality_dropout=0.4)

  def batches(batch_size, index, count):
    it = iter(ip.make_dataset(tiny_dataset, "train", batch_size=batch_size, seed=2,
                              augment_config=augment, process_index=index, process_count=count))
    return [next(it) for _ in range(3)]

  single = batches(12, 0, 1)
  parts = [batches(6, i, 2) for i in range(2)]
  for k, whole in enumerate(single):
    for key in ("imu", "imu_location", "modality_mask", "text_len", "pose"):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][k][key], parts[1][k][key]]), whole[key], err_msg=key)
  masks = np.concatenate([b["modality_mask"] for b in single])
  assert 0 < (masks == 0).mean() < 0.6 and (masks.sum(axis=1) >= 2).all()
  assert len(set(np.concatenate([b["imu_location"] for b in single]).tolist())) == 3


def test_last_short_eval_batch_is_split_across_processes(tiny_dataset):
  """num_epochs=1 without drop_remainder: every record once; a process's part may be empty."""
  seen = []
  for i in range(2):
    ds = ip.make_dataset(tiny_dataset, "val", batch_size=8, shuffle=False, num_epochs=1,
                         drop_remainder=False, augment_config=ALL, process_index=i,
                         process_count=2)
    seen.append([example_ids(b).tolist() for b in ds])
  assert [len(b) for b in seen[0]] == [8, 4] and [len(b) for b in seen[1]] == [8, 0]
  flat = [i for batches in seen for b in batches for i in b]
  assert sorted(flat) == sorted(c * 100 + w for c in range(12, 16) for w in range(5))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterator_state_round_trip_with_orbax(tiny_dataset, tmp_path, num_workers):
  def fresh():
    ds = ip.make_dataset(tiny_dataset, "train", batch_size=4, seed=5, process_index=0,
                         process_count=1,
                         augment_config=ip.AugmentConfig("random", modality_dropout=0.3))
    return ip.make_iterator(ds, num_workers=num_workers)

  it = fresh()
  for _ in range(7):
    next(it)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it) for _ in range(6)]

  restored = fresh()
  manager.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  for want in expected:
    got = next(restored)
    for key in ("imu", "imu_location", "modality_mask", "text_ids", "label"):
      np.testing.assert_array_equal(got[key], want[key])


def test_augment_picks_only_real_locations_and_keeps_pairs():
  from conftest import tiny_example, tiny_info
  info = tiny_info()
  rng = np.random.default_rng(0)
  exs = [tiny_example(info, rng, c, 0) for c in range(200)]
  for i, ex in enumerate(exs):
    ex["imu_location_mask"] = [0, 1, 1] if i % 2 else [1, 0, 0]
    ex["imu"][:, 0, 0] = np.arange(3)  # location id in sample 0
  elements = [(i, records.encode_example(info, e)) for i, e in enumerate(exs)]
  parse = lambda config, seed=1: ip.parse_and_augment(elements, np.random.default_rng(seed),
                                                       info, config, str)
  out = parse(ip.AugmentConfig("random", modality_dropout=0.7))
  loc = out["imu_location"]
  assert out["imu"].shape == (200, 20, 6)
  assert set(loc[0::2]) == {0} and set(loc[1::2]) == {1, 2}
  kept_imu = out["modality_mask"][:, 0] == 1
  np.testing.assert_array_equal(out["imu"][kept_imu, 0, 0], loc[kept_imu])
  np.testing.assert_array_equal(out["imu"][:, 1:], [e["imu"][l, 1:] if k else 0 * e["imu"][0, 1:]
                                                    for e, l, k in zip(exs, loc, kept_imu)])
  assert (out["modality_mask"].sum(axis=1) >= 2).all()
  dropped = out["modality_mask"] == 0
  assert 0.4 < dropped.mean() < 0.6  # 0.7 asked, less where pairs were rescued
  assert not out["video"][dropped[:, 2]].any() and not out["text_len"][dropped[:, 3]].any()
  fixed = parse(ip.AugmentConfig(("pelvis",)))
  assert set(fixed["imu_location"][1::2]) == {2}
  np.testing.assert_array_equal(fixed["imu_location"][0::2], -1)  # no pelvis there
  np.testing.assert_array_equal(fixed["modality_mask"][0::2, 0], 0)
  assert not fixed["imu"][0::2].any()
  everything = parse(ip.AugmentConfig("all"))
  assert everything["imu"].shape == (200, 3, 20, 6) and "imu_location" not in everything
  with pytest.raises(ValueError, match="unknown IMU locations"):
    parse(ip.AugmentConfig(("nose",)))


def _corrupt_one_record(data_dir):
  info = records.DatasetInfo.load(data_dir)
  shard = info.shard_paths(data_dir, "train")[2]
  offset = int(tfrecord.load_index(shard)[3, 0])
  with open(shard, "r+b") as f:
    f.seek(offset + 10)
    f.write(b"\x00\x01\x02")
  return shard, offset - 12


def test_corrupt_record_fails_with_its_name_or_is_skipped(tiny_dataset):
  shard, record_offset = _corrupt_one_record(tiny_dataset)
  with pytest.raises(tfrecord.CorruptRecordError,
                     match=rf"train-00002\.tfrecord: record 3 at byte offset {record_offset}"):
    _ids(tiny_dataset, 10, shuffle=False)


def test_skip_corrupt_keeps_batches_full(tiny_dataset):
  _corrupt_one_record(tiny_dataset)
  ds = ip.make_dataset(tiny_dataset, "train", batch_size=5, shuffle=False, num_epochs=2,
                       drop_remainder=False, skip_corrupt=True, augment_config=ALL,
                       process_index=0, process_count=1)
  batches = list(ds)
  ids = np.concatenate([example_ids(b) for b in batches])
  # Record 3 of shard 2 is global record 17: clip 3, window 2.
  assert sorted(ids) == sorted(2 * sorted(TRAIN_IDS - {302}))
  assert [len(b["label"]) for b in batches] == [5] * 23 + [3]
  assert sum(int(b[ip.SKIPPED_CORRUPT].sum()) for b in batches) == 2  # once per epoch


def test_unindexed_shards_read_sequentially(tiny_dataset):
  """Shards listed without an index digest (written elsewhere) are read in order; an
  index that was written with the dataset and is gone is an error naming it."""
  info = records.DatasetInfo.load(tiny_dataset)
  shards = info.shard_paths(tiny_dataset, "train")
  os.remove(tfrecord.index_path(shards[1]))
  with pytest.raises(FileNotFoundError, match=r"train-00001\.tfrecord\.index\.npy is missing"):
    ip.make_dataset(tiny_dataset, "train", batch_size=7, process_index=0, process_count=1)
  for shard in shards:
    if os.path.exists(tfrecord.index_path(shard)):
      os.remove(tfrecord.index_path(shard))
  split = info.splits["train"]
  dataclasses.replace(info, splits={**info.splits, "train": dataclasses.replace(
      split, shards=tuple(dataclasses.replace(s, index_sha256=None) for s in split.shards))}
                      ).save(tiny_dataset)
  ds = ip.make_dataset(tiny_dataset, "train", batch_size=7, seed=0, num_epochs=1,
                       drop_remainder=False, augment_config=ALL, shuffle_window=16,
                       process_index=0, process_count=1)
  ids = np.concatenate([example_ids(b) for b in ds])
  assert sorted(ids) == sorted(TRAIN_IDS)
  assert (ids != np.sort(ids)).any()


def test_global_batch_is_sharded_over_the_data_axis(tiny_dataset):
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("data",))
  ds = ip.make_dataset(tiny_dataset, "train", batch_size=16, seed=0, process_index=0,
                       process_count=1)
  local = next(iter(ds))
  batch = ip.to_global_batch(local, mesh)
  assert batch["imu"].shape == (16, 20, 6)
  assert batch["imu"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert {s.data.shape for s in batch["imu"].addressable_shards} == {(2, 20, 6)}
  np.testing.assert_array_equal(np.asarray(batch["imu"]), local["imu"])
  assert batch["clip_id"] is local["clip_id"]


MODES = [(crc, cache) for cache in (False, True) for crc in ip.CRC_CHECKS]
AUGMENTED = ip.AugmentConfig("random", modality_dropout=0.3)


def _batches(data_dir, n, num_workers=0, batch_size=6, **kw):
  ds = ip.make_dataset(data_dir, "train", batch_size=batch_size, seed=4, process_index=0,
                       process_count=1, augment_config=kw.pop("augment_config", AUGMENTED), **kw)
  it = ip.make_iterator(ds, num_workers=num_workers)
  out = [next(it) for _ in range(n)]
  if hasattr(it, "close"):
    it.close()
  return out


def _assert_same(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert sorted(g) == sorted(w)
    for key in w:
      np.testing.assert_array_equal(g[key], w[key], err_msg=key)


@pytest.mark.parametrize("crc_check, cache_in_memory", MODES)
def test_every_mode_gives_the_same_batches(tiny_dataset, crc_check, cache_in_memory):
  """2.5 epochs: first reads, then range reads or cache hits, all equal to `always`."""
  want = _batches(tiny_dataset, 25)
  _assert_same(_batches(tiny_dataset, 25, crc_check=crc_check,
                        cache_in_memory=cache_in_memory), want)
  everything = dict(augment_config=ALL, crc_check=crc_check, cache_in_memory=cache_in_memory)
  _assert_same(_batches(tiny_dataset, 12, **everything), _batches(tiny_dataset, 12,
                                                                   augment_config=ALL))


@pytest.mark.slow
@pytest.mark.parametrize("crc_check, cache_in_memory", MODES)
def test_every_mode_gives_the_same_batches_with_a_worker(tiny_dataset, crc_check,
                                                         cache_in_memory):
  _assert_same(_batches(tiny_dataset, 25, num_workers=1, crc_check=crc_check,
                        cache_in_memory=cache_in_memory), _batches(tiny_dataset, 25))


@pytest.mark.parametrize("crc_check", ip.CRC_CHECKS)
def test_later_passes_read_only_the_needed_bytes(tiny_dataset, monkeypatch, crc_check):
  whole, parts = [], collections.Counter()
  read_many, read_into = tfrecord.ShardReader.read_many, tfrecord.ShardReader.read_into

  def counting_read_many(self, indices, verify=None):
    whole.extend(zip(indices, verify or [self.verify] * len(indices)))
    return read_many(self, indices, verify)

  def counting_read_into(self, requests):
    for i, _, buffers in requests:
      parts[self.path, i] += sum(b.nbytes for b in buffers)
    return read_into(self, requests)

  monkeypatch.setattr(tfrecord.ShardReader, "read_many", counting_read_many)
  monkeypatch.setattr(tfrecord.ShardReader, "read_into", counting_read_into)
  monkeypatch.setattr(ip, "_MERGE_GAP_BYTES", 64)  # the tiny records' IMU locations are small
  info = records.DatasetInfo.load(tiny_dataset)
  source = ip.IndexedShardSource(info.shard_paths(tiny_dataset, "train"), crc_check=crc_check)
  one_location = lambda kept, mask: np.arange(len(mask)) % 3
  for start in range(0, 60, 20):
    source.read_batch(info, range(start, start + 20), one_location)
  assert len(whole) == 60 and not parts
  assert all(verify == (crc_check != "off") for _, verify in whole)
  whole.clear()
  batch, _ = source.read_batch(info, range(60), one_location)
  if crc_check == "always":
    assert len(whole) == 60 and not parts
    return
  assert not whole and len(parts) == 60
  needed = 240 + 240 + 32 + 32  # one IMU location, pose, video, text_ids
  assert all(needed <= n <= needed + 128 for n in parts.values())  # + entry headers between
  payload_bytes = sum(len(p) for _, p in source._getitems(range(60)))
  assert sum(parts.values()) < 0.6 * payload_bytes
  np.testing.assert_array_equal(example_ids(batch)[0::3], example_ids(
      source.read_batch(info, range(0, 60, 3), lambda kept, mask: np.zeros(len(mask), int))[0]))


@pytest.mark.parametrize("crc_check", ["always", "first_pass"])
def test_corrupt_record_is_caught_on_its_first_read(tiny_dataset, crc_check):
  shard, record_offset = _corrupt_one_record(tiny_dataset)
  with pytest.raises(tfrecord.CorruptRecordError,
                     match=rf"train-00002\.tfrecord: record 3 at byte offset {record_offset}: "
                           "bad payload checksum"):
    _ids(tiny_dataset, 10, shuffle=False, crc_check=crc_check)
  # Not checked; these bytes break the record's structure, which decoding still catches.
  with pytest.raises(records.RecordFormatError,
                     match=rf"train-00002\.tfrecord: record 3 at byte offset {record_offset}"):
    _ids(tiny_dataset, 10, shuffle=False, crc_check="off")


def _rewrite_shard(data_dir, k, payloads):
  """Replaces train shard k, recording its new index digest in dataset_info.json."""
  info = records.DatasetInfo.load(data_dir)
  split = info.splits["train"]
  shards = list(split.shards)
  written = tfrecord.write_shard(info.shard_paths(data_dir, "train")[k], payloads)
  shards[k] = dataclasses.replace(shards[k], index_sha256=written.index_sha256)
  dataclasses.replace(info, splits={**info.splits, "train": dataclasses.replace(
      split, shards=tuple(shards))}).save(data_dir)


def test_records_of_another_writer_in_a_shard_are_read_alike(tiny_dataset):
  """A shard rewritten in another valid layout (protobuf parses it, offsets found by
  value) gives the same batches in every mode, range reads included."""
  from test_records import _rewrite  # pylint: disable=import-outside-toplevel
  want = _batches(tiny_dataset, 25)
  info = records.DatasetInfo.load(tiny_dataset)
  shard = info.shard_paths(tiny_dataset, "train")[1]
  payloads = [p for _, p in tfrecord.iter_records(shard)]
  _rewrite_shard(tiny_dataset, 1, [_rewrite(p, reverse=True, unpacked=True) for p in payloads])
  assert [p for _, p in tfrecord.iter_records(shard)] != payloads
  for crc_check, cache in MODES:
    _assert_same(_batches(tiny_dataset, 25, crc_check=crc_check, cache_in_memory=cache), want)


def test_a_record_that_is_not_an_example_names_shard_and_record(tiny_dataset):
  info = records.DatasetInfo.load(tiny_dataset)
  shard = info.shard_paths(tiny_dataset, "train")[4]
  payloads = [p for _, p in tfrecord.iter_records(shard)]
  payloads[2] = payloads[2][:-9]  # framed and checksummed, but cut short
  _rewrite_shard(tiny_dataset, 4, payloads)
  offset = int(tfrecord.load_index(shard)[2, 0]) - 12
  for crc_check in ip.CRC_CHECKS:
    with pytest.raises(records.RecordFormatError,
                       match=rf"train-00004\.tfrecord: record 2 at byte offset {offset}"):
      _ids(tiny_dataset, 10, shuffle=False, crc_check=crc_check)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_state_round_trip_with_the_cache(tiny_dataset, tmp_path, num_workers):
  def fresh():
    ds = ip.make_dataset(tiny_dataset, "train", batch_size=4, seed=5, process_index=0,
                         process_count=1, augment_config=AUGMENTED, crc_check="first_pass",
                         cache_in_memory=True)
    return ip.make_iterator(ds, num_workers=num_workers)

  it = fresh()
  for _ in range(17):  # past the first epoch: served from the cache
    next(it)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(17, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it) for _ in range(20)]
  restored = fresh()  # an empty cache: first reads again, same batches
  manager.restore(17, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same([next(restored) for _ in range(20)], expected)


def test_cache_holds_only_what_was_read(tiny_dataset):
  info = records.DatasetInfo.load(tiny_dataset)
  source = ip.IndexedShardSource(info.shard_paths(tiny_dataset, "train"), cache_in_memory=True)
  assert source.cache_bytes == 0
  batch, kept = source.read_batch(info, [5, 7, 40])
  assert kept.all() and batch["imu"].shape == (3, 3, 20, 6)
  assert source.cache_bytes == 3 * (720 + 240 + 32 + 32)
  np.testing.assert_array_equal(example_ids(batch), [100, 102, 800])
  again, _ = source.read_batch(info, [40, 5], lambda kept, mask: np.array([2, -1]))
  np.testing.assert_array_equal(again["imu"][0], batch["imu"][2, 2])
  assert not again["imu"][1].any() and again["modality_mask"][1, 0] == 0
  assert source.cache_bytes == 3 * (720 + 240 + 32 + 32)


def test_prefetch_to_device_resumes_exactly(tiny_dataset, tmp_path):
  mesh = jax.make_mesh((8,), ("data",))

  def fresh():
    ds = ip.make_dataset(tiny_dataset, "train", batch_size=8, seed=2, process_index=0,
                         process_count=1, augment_config=AUGMENTED, crc_check="first_pass")
    return ip.prefetch_to_device(ip.make_iterator(ds), mesh, size=2)

  it = fresh()
  uninterrupted = [next(it) for _ in range(12)]
  assert isinstance(uninterrupted[0]["imu"], jax.Array)
  assert uninterrupted[0]["imu"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert uninterrupted[0]["clip_id"].dtype == object  # stays on host

  it = fresh()
  for _ in range(5):
    next(it)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  restored = fresh()
  next(restored)  # restoring rewinds whatever was fetched or queued
  manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  got = [next(restored) for _ in range(7)]
  _assert_same([{k: np.asarray(v) for k, v in b.items()} for b in got],
               [{k: np.asarray(v) for k, v in b.items()} for b in uninterrupted[5:]])
  # The host iterator itself is ahead by the two batches in flight.
  assert it.get_state() != it._host.get_state()
  host = [{k: np.asarray(v) for k, v in uninterrupted[0].items()}]
  only = list(ip.prefetch_to_device(iter(host), mesh, 1, keys=("imu", "label")))
  assert len(only) == 1 and sorted(only[0]) == ["imu", "label"]
  np.testing.assert_array_equal(np.asarray(only[0]["imu"]), host[0]["imu"])


def test_prefetch_raises_a_read_ahead_error_only_when_its_batch_is_asked_for():
  """A job stopping on SIGTERM (which also ends Grain's workers) must still hand out
  the batches already fetched and report the state of the last one it took."""
  mesh = jax.make_mesh((8,), ("data",))

  class Host:
    def __init__(self):
      self.position = 0

    def __next__(self):
      if self.position == 3:
        raise RuntimeError("worker process was terminated")
      self.position += 1
      return {"x": np.full((8,), self.position, np.int32)}

    def get_state(self):
      return {"position": self.position}

    def set_state(self, state):
      self.position = state["position"]

  it = ip.prefetch_to_device(Host(), mesh, size=2)
  assert int(np.asarray(next(it)["x"])[0]) == 1
  assert int(np.asarray(next(it)["x"])[0]) == 2  # reading batch 4 ahead failed here
  assert it.get_state() == {"position": 2}
  assert int(np.asarray(next(it)["x"])[0]) == 3
  with pytest.raises(RuntimeError, match="worker process was terminated"):
    next(it)
  assert it.get_state() == {"position": 3}
  it.set_state({"position": 1})  # a restore clears the error
  assert int(np.asarray(next(it)["x"])[0]) == 2


def test_imu_augmentation_is_per_example_deterministic_and_leaves_dropout_alone(tiny_dataset):
  """Each example's draw is its own, the same for any process count, and dropout's draws
  (and so the masks) do not change when the IMU augmentation is switched on."""
  plain = ip.AugmentConfig("random", modality_dropout=0.4)
  on = dataclasses.replace(plain, imu_augment=imu_augment.ImuAugmentConfig(gyr_bias=0.5))

  def batches(config, batch_size=12, index=0, count=1):
    it = iter(ip.make_dataset(tiny_dataset, "train", batch_size=batch_size, seed=2,
                              augment_config=config, process_index=index, process_count=count))
    return [next(it) for _ in range(4)]

  base, aug = batches(plain), batches(on)
  parts = [batches(on, 6, i, 2) for i in range(2)]
  offsets = []
  for k, (want, got, again) in enumerate(zip(base, aug, batches(on))):
    for key in ("imu", "imu_location", "modality_mask", "text_len"):
      np.testing.assert_array_equal(again[key], got[key], err_msg=key)
      np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]),
                                    got[key], err_msg=key)
    for key in ("imu_location", "modality_mask", "text_len", "pose"):
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(got["imu"][..., :3], want["imu"][..., :3])
    diff = got["imu"][..., 3:].astype(np.float32) - want["imu"][..., 3:]
    np.testing.assert_allclose(diff, np.broadcast_to(diff[:, :1], diff.shape), atol=2e-3)
    has_imu = got["modality_mask"][:, 0] == 1
    assert not diff[~has_imu].any() and (~has_imu).any()
    assert np.abs(diff).max() <= 0.5 + 2e-3
    offsets.append(diff[has_imu, 0])
  offsets = np.concatenate(offsets)
  assert len(np.unique(np.round(offsets, 2), axis=0)) == len(offsets)  # a draw per example


def test_imu_augmentation_resumes_exactly_with_workers_on_every_location(tiny_dataset):
  config = ip.AugmentConfig("all", imu_augment=imu_augment.ImuAugmentConfig(
      rotation="uniform", acc_noise_std=0.1, gyr_bias=0.05, rate_jitter=0.05))

  def fresh(num_workers):
    ds = ip.make_dataset(tiny_dataset, "train", batch_size=4, seed=5, process_index=0,
                         process_count=1, augment_config=config)
    return ip.make_iterator(ds, num_workers=num_workers)

  it = fresh(2)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  single = fresh(0)
  for want in first:
    np.testing.assert_array_equal(next(single)["imu"], want["imu"])
  restored = fresh(2)
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    assert got["imu"].shape == (4, 3, 20, 6)
    np.testing.assert_array_equal(got["imu"], want["imu"])
    np.testing.assert_array_equal(got["clip_id"], want["clip_id"])


def test_imu_augmentation_draws_by_stream_position_and_skips_absent_imu():
  rng = np.random.default_rng(0)
  imu = rng.normal(size=(6, 3, 20, 6)).astype(np.float16)
  location_mask = np.ones((6, 3), np.int32)
  location_mask[2, 1] = 0
  imu[2, 1] = 0
  modality_mask = np.ones((6, 4), np.int32)
  modality_mask[4, 0] = 0
  imu[4] = 0
  config = ip.AugmentConfig("all", imu_augment=imu_augment.ImuAugmentConfig(
      rotation="small", gyr_noise_std=0.1, acc_bias=0.2))

  def run(rows, positions):
    batch = {"imu": imu[rows].copy(), "imu_location_mask": location_mask[rows],
             "modality_mask": modality_mask[rows]}
    return ip.augment(batch, ip.PositionalRandom(7, positions), config)["imu"]

  whole = run(slice(None), np.arange(100, 106))
  np.testing.assert_array_equal(run(slice(3, 6), [103, 104, 105]), whole[3:])
  assert not whole[2, 1].any() and not whole[4].any()
  changed = (whole != imu).any(axis=(-2, -1))
  assert changed.sum() == 6 * 3 - 1 - 3
  other = run(slice(None), np.arange(200, 206))
  assert (other[changed] != whole[changed]).any(axis=(-2, -1)).all()
  np.testing.assert_array_equal(run(slice(None), np.arange(100, 106)), whole)
  # The chosen-location layout [B, T, 6] goes through as well.
  batch = {"imu": imu[:, 0].copy(), "imu_location_mask": location_mask,
           "modality_mask": modality_mask}
  out = ip.augment(batch, ip.PositionalRandom(7, np.arange(6)), config)["imu"]
  assert out.shape == (6, 20, 6) and not out[4].any()
  assert (out[[0, 1, 2, 3, 5]] != imu[[0, 1, 2, 3, 5], 0]).any(axis=(-2, -1)).all()


def test_named_imu_locations_from_a_tuple_or_a_command_line_string():
  info = tiny_info()
  mask = np.ones((200, 3), np.int32)
  mask[:100, 1] = 0                              # the first half has no right_wrist
  for names in (("right_wrist", "pelvis"), "right_wrist, pelvis"):
    chosen = ip.choose_imu_locations(mask, np.random.default_rng(0),
                                     ip.AugmentConfig(imu_locations=names), info)
    assert set(chosen[:100]) == {2} and set(chosen[100:]) == {1, 2}
  with pytest.raises(ValueError, match=r"unknown IMU locations \['chest'\]"):
    ip.choose_imu_locations(mask, np.random.default_rng(0),
                            ip.AugmentConfig(imu_locations="chest,pelvis"), info)
