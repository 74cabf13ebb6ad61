import json
import os
import re

import numpy as np
import pytest

from conftest import tiny_example, tiny_info, write_tiny_dataset
from mujo_jax import records
from mujo_jax import tfrecord


def test_every_field_round_trips():
  info = tiny_info()
  rng = np.random.default_rng(1)
  exs = [tiny_example(info, rng, c, w) for c in range(3) for w in range(2)]
  exs[1]["imu_location_mask"] = [1, 0, 1]
  exs[2]["label"] = -1
  batch = records.decode_batch(info, [records.encode_example(info, e) for e in exs])
  for i, ex in enumerate(exs):
    for key in ("imu", "pose", "video", "text_ids"):
      np.testing.assert_array_equal(batch[key][i], ex[key])
    assert batch["text_len"][i] == ex["text_len"]
    assert batch["label"][i] == ex["label"]
    assert batch["window_index"][i] == ex["window_index"]
    assert batch["clip_id"][i].decode() == ex["clip_id"]
  assert batch["imu"].dtype == np.float16 and batch["text_ids"].dtype == np.int32
  np.testing.assert_array_equal(batch["imu_location_mask"][1], [1, 0, 1])
  np.testing.assert_array_equal(batch["modality_mask"], np.ones((6, 4)))


def test_missing_modalities_read_as_zeros_with_mask():
  info = tiny_info()
  rng = np.random.default_rng(2)
  ex = tiny_example(info, rng, 0, 0, drop=("pose", "text_ids"))
  batch = records.decode_batch(info, [records.encode_example(info, ex)])
  np.testing.assert_array_equal(batch["modality_mask"][0], [1, 0, 1, 0])
  assert not batch["pose"].any() and not batch["text_ids"].any() and batch["text_len"][0] == 0
  np.testing.assert_array_equal(batch["video"][0], ex["video"])


@pytest.mark.parametrize("change, message", [
    (dict(imu=np.zeros((3, 20, 5))), r"clip 'clip000' window 0: imu has shape \(3, 20, 5\)"),
    (dict(video=np.full((2, 8), np.nan)), "video has non-finite values"),
    (dict(pose=np.full((10, 4, 3), 1e6)), "pose overflows float16"),
    (dict(text_ids=np.full(8, 100)), r"text_ids has ids outside \[0, 100\)"),
    (dict(label=3), r"label 3 outside \[-1, 3\)"),
    (dict(imu=None, pose=None, video=None, text_ids=None), "no modality present"),
    (dict(clip_id=""), "no clip_id"),
])
def test_encode_rejects_bad_examples(change, message):
  info = tiny_info()
  ex = tiny_example(info, np.random.default_rng(0), 0, 0)
  ex.update(change)
  with pytest.raises(records.RecordFormatError, match=message):
    records.encode_example(info, ex)


def test_decode_names_record_with_wrong_shape():
  writer_info = tiny_info(video_dim=6)
  reader_info = tiny_info()
  payload = records.encode_example(writer_info, tiny_example(writer_info, np.random.default_rng(0), 0, 0))
  with pytest.raises(records.RecordFormatError,
                     match=r"shard-7 @ 99: field 'video' has 24 bytes, expected 32 bytes"):
    records.decode_batch(reader_info, [payload], where=lambda i: "shard-7 @ 99")
  with pytest.raises(records.RecordFormatError, match="record 0 of the batch: not a tf.train.Example"):
    records.decode_batch(reader_info, [b"\xff\xff garbage"])


def test_dataset_info_round_trip_and_validation(tmp_path):
  info = write_tiny_dataset(tmp_path)
  loaded = records.DatasetInfo.load(str(tmp_path))
  assert loaded == info
  assert loaded.splits["train"].num_examples == 60 and loaded.splits["val"].num_clips == 4
  assert [os.path.basename(p) for p in loaded.shard_paths(str(tmp_path), "val")] == [
      "val-00000.tfrecord", "val-00001.tfrecord", "val-00002.tfrecord"]
  stored = json.loads((tmp_path / records.INFO_FILENAME).read_text())
  assert stored["array_specs"]["imu"] == {"shape": [3, 20, 6], "dtype": "<f2"}
  for key, value, message in [("format_version", 99, "format_version 99"),
                              ("format_version", 1, "format_version 1, this reader understands 2"),
                              ("bogus", 1, r"unknown keys \['bogus'\]"),
                              ("video_dim", 9, "array_specs .* disagree")]:
    bad = dict(stored, **{key: value})
    (tmp_path / records.INFO_FILENAME).write_text(records.seal_info_json(bad))
    with pytest.raises(records.RecordFormatError, match=message):
      records.DatasetInfo.load(str(tmp_path))
  # Edited without resealing, or the same content spaced differently: both refused.
  info_path = re.escape(str(tmp_path / records.INFO_FILENAME))
  for text, message in [(json.dumps(dict(stored, video_dim=9), indent=2) + "\n",
                         "content does not match its sha256"),
                        (json.dumps(stored) + "\n", "not the form its writer made")]:
    (tmp_path / records.INFO_FILENAME).write_text(text)
    with pytest.raises(records.RecordFormatError, match=f"{info_path}: .*{message}"):
      records.DatasetInfo.load(str(tmp_path))
  with pytest.raises(KeyError, match="split 'test' not in"):
    info.shard_paths(str(tmp_path), "test")
  with pytest.raises(FileNotFoundError, match="make_demo"):
    records.DatasetInfo.load(str(tmp_path / "nowhere"))


def test_writer_shards_and_rejects_clips_in_two_splits(tmp_path):
  from data_prep.dataset_writer import DatasetWriter
  info = write_tiny_dataset(tmp_path / "a", records_per_shard=7)
  assert [s.num_records for s in info.splits["train"].shards] == [7] * 8 + [4]
  for shard in info.shard_paths(str(tmp_path / "a"), "train"):
    assert os.path.exists(tfrecord.index_path(shard))
  writer = DatasetWriter(str(tmp_path / "b"), tiny_info())
  rng = np.random.default_rng(0)
  writer.write_split("train", [tiny_example(tiny_info(), rng, 0, 0)])
  writer.write_split("val", [tiny_example(tiny_info(), rng, 0, 1)])
  with pytest.raises(ValueError, match=r"clips in both 'train' and 'val'.*clip000"):
    writer.finish()
  assert not os.path.exists(tmp_path / "b" / records.INFO_FILENAME)


def test_encoded_bytes_do_not_depend_on_the_process():
  """Protobuf map order varies between processes unless serialised deterministically."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  code = ("import hashlib, sys; sys.path[:0] = ['.', 'tests']\n"
          "from conftest import tiny_example, tiny_info\n"
          "import numpy as np\n"
          "from mujo_jax import records\n"
          "info, rng = tiny_info(), np.random.default_rng(0)\n"
          "print(hashlib.sha256(b''.join(records.encode_example(info, tiny_example(info, rng, i, 0))"
          " for i in range(8))).hexdigest())")
  root = os.path.join(os.path.dirname(__file__), "..")
  digests = {subprocess.run([sys.executable, "-c", code], cwd=root, check=True, text=True,
                            capture_output=True, env=dict(os.environ, PYTHONHASHSEED=str(seed))
                            ).stdout.strip() for seed in range(4)}
  assert len(digests) == 1, digests


NBYTES = (720, 240, 32, 32)  # tiny_info's imu, pose, video, text_ids (records.ARRAY_KEYS)


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1
  out = bytearray()
  while True:
    out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
    value >>= 7
    if not value:
      return bytes(out)


def _field(number: int, data: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(data)) + data


def _rewrite(payload: bytes, *, reverse: bool = False, unpacked: bool = False,
             extra: bool = False) -> bytes:
  """The same Example in another valid wire layout: keys in reverse order, int64
  lists unpacked, an extra feature: what other writers may produce."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=import-outside-toplevel
  fmap = tf_example_pb2.Example.FromString(payload).features.feature
  entries = []
  for key in sorted(fmap, reverse=reverse) + (["zz_extra"] if extra else []):
    if key == "zz_extra":
      feature = _field(1, _field(1, b"whatever"))
    elif fmap[key].HasField("int64_list"):
      values = list(fmap[key].int64_list.value)
      body = (b"".join(b"\x08" + _varint(v) for v in values) if unpacked
              else _field(1, b"".join(_varint(v) for v in values)))
      feature = _field(3, body)
    else:
      feature = _field(1, b"".join(_field(1, v) for v in fmap[key].bytes_list.value))
    entries.append(_field(1, _field(1, key.encode()) + _field(2, feature)))
  return _field(1, b"".join(entries))


def _assert_batches_equal(got, want):
  assert sorted(got) == sorted(want)
  for key in want:
    assert got[key].dtype == want[key].dtype, key
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _varied_examples(info, rng):
  """Missing modalities, clip ids of 1 to 200 bytes (1- and 2-byte lengths), label -1
  (a 10-byte varint), window indexes past 127, partial location masks."""
  drops = [(), ("pose",), ("text_ids",), ("video",), ("imu",), ("pose", "video"),
           ("imu", "text_ids")]
  exs = []
  for i, drop in enumerate(drops * 3):
    ex = tiny_example(info, rng, i, [0, 5, 200, 70000][i % 4], drop=drop)
    ex["clip_id"] = "c" * [1, 9, 127, 128, 200][i % 5]
    ex["label"] = [-1, 0, 2][i % 3]
    ex["imu_location_mask"] = [[1, 1, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0]][i % 4]
    exs.append(ex)
  return exs


@pytest.mark.parametrize("location", [None, "each", 0, 1, 2, -1])
def test_fixed_layout_decode_equals_protobuf_decode(location):
  info = tiny_info()
  exs = _varied_examples(info, np.random.default_rng(3))
  payloads = [records.encode_example(info, e) for e in exs]
  n = len(payloads)
  if location is None:
    choose = None
  elif location == "each":
    choose = lambda mask: np.arange(n) % 4 - 1  # -1, 0, 1, 2 in turn
  else:
    choose = lambda mask: np.full(n, location)
  fast = records.decode_batch(info, payloads, imu_location=choose)
  _assert_batches_equal(fast, records.decode_batch(info, payloads, imu_location=choose,
                                                   use_protobuf=True))
  assert all(records._scan_fixed_layout(p, NBYTES, 3) for p in payloads)
  for i, ex in enumerate(exs):  # and both equal what was written
    assert fast["clip_id"][i].decode() == ex["clip_id"]
    assert fast["window_index"][i] == ex["window_index"] and fast["label"][i] == ex["label"]
    if ex["video"] is None:
      assert not fast["video"][i].any() and fast["modality_mask"][i, 2] == 0
    else:
      np.testing.assert_array_equal(fast["video"][i], ex["video"])
    if location is not None and ex["imu"] is not None and fast["imu_location"][i] >= 0:
      np.testing.assert_array_equal(fast["imu"][i], ex["imu"][fast["imu_location"][i]])


@pytest.mark.parametrize("change", [dict(reverse=True), dict(unpacked=True), dict(extra=True),
                                    dict(reverse=True, unpacked=True, extra=True)])
def test_records_in_another_wire_layout_decode_the_same(change):
  info = tiny_info()
  payloads = [records.encode_example(info, e)
              for e in _varied_examples(info, np.random.default_rng(4))]
  other = [_rewrite(p, **change) for p in payloads]
  assert other != payloads
  if change.get("unpacked"):  # not the writer's layout: protobuf parses these
    assert not any(records._scan_fixed_layout(p, NBYTES, 3) for p in other)
  facts = records.scan_records(info, other)
  want = records.decode_batch(info, payloads)
  _assert_batches_equal(records.decode_batch(info, other), want)
  # The array offsets found point at the same bytes as in the original records.
  for p, q, o, o2 in zip(payloads, other, facts["offsets"], records.scan_records(info, payloads)["offsets"]):
    for off, off2, n in zip(o, o2, NBYTES):
      assert (off < 0) == (off2 < 0)
      assert off < 0 or q[off:off + n] == p[off2:off2 + n]


def test_corrupt_layout_is_rejected_naming_the_record():
  info = tiny_info()
  payload = records.encode_example(info, tiny_example(info, np.random.default_rng(0), 0, 0))
  where = lambda i: "shard-3: record 5 at byte offset 1200"
  for bad in (payload[:-7], payload[:40], payload[:-1] + b"\x80", b"\x0a\x05" + payload[2:]):
    assert records._scan_fixed_layout(bad, NBYTES, 3) is None
    with pytest.raises(records.RecordFormatError, match="shard-3: record 5 at byte offset 1200"):
      records.decode_batch(info, [bad], where=where)
  # A video value 2 bytes short (its lengths adjusted, so the record still parses).
  short = tiny_info(video_dim=7)
  payload = records.encode_example(short, tiny_example(short, np.random.default_rng(0), 0, 0))
  assert records._scan_fixed_layout(payload, NBYTES, 3) is None
  with pytest.raises(records.RecordFormatError,
                     match="record 5 at byte offset 1200: field 'video' has 28 bytes, expected 32"):
    records.decode_batch(info, [payload], where=where)
