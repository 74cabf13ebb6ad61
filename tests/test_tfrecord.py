import os
import struct

import numpy as np
import pytest

from mujo_jax import tfrecord

# Written by tf.io.TFRecordWriter (TensorFlow 2.x): b"", b"hello tfrecord", and a
# tf.train.Example with feature x = int64 [1, 2, 3].
TF_GOLDEN = bytes.fromhex(
    "000000000000000029039807d8ea82a20e00000000000000c5e5693f68656c6c6f2074667265636f"
    "72649f5b7622100000000000000095fbfe180a0e0a0c0a017812071a050a030102039fb98a87")


def _crc32c_reference(data: bytes) -> int:
  """Bitwise CRC32C (Castagnoli, reflected polynomial 0x82F63B78)."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("data, expected", [
    # RFC 3720 (iSCSI) appendix B.4 test vectors.
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
])
def test_crc32c_published_vectors(data, expected):
  assert tfrecord.crc32c(data) == expected
  assert _crc32c_reference(data) == expected


def test_framing_matches_tensorflow_bytes():
  ex = bytes.fromhex("0a0e0a0c0a017812071a050a03010203")
  assert b"".join(tfrecord.frame(p) for p in (b"", b"hello tfrecord", ex)) == TF_GOLDEN


def test_reads_tensorflow_written_file(tmp_path):
  path = str(tmp_path / "tf.tfrecord")
  with open(path, "wb") as f:
    f.write(TF_GOLDEN)
  assert [p for _, p in tfrecord.iter_records(path)][:2] == [b"", b"hello tfrecord"]
  assert tfrecord.build_index(path).num_records == 3
  reader = tfrecord.ShardReader(path)
  assert reader.read(1) == b"hello tfrecord"


def test_round_trip_random_access(tmp_path):
  rng = np.random.default_rng(0)
  payloads = [rng.bytes(int(n)) for n in rng.integers(0, 3000, 50)]
  path = str(tmp_path / "s.tfrecord")
  written = tfrecord.write_shard(path, payloads)
  assert written.num_records == 50 and written.index_sha256 == tfrecord.index_sha256(path)
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
  reader = tfrecord.ShardReader(path)
  order = rng.permutation(50)
  assert [reader.read(int(i)) for i in order] == [payloads[i] for i in order]
  assert [p for _, p in tfrecord.iter_records(path)] == payloads
  index = np.load(tfrecord.index_path(path))
  os.remove(tfrecord.index_path(path))
  assert tfrecord.build_index(path) == written  # the same bytes, so the same digest
  np.testing.assert_array_equal(np.load(tfrecord.index_path(path)), index)


def _write(tmp_path, n=10, size=100):
  path = str(tmp_path / "s.tfrecord")
  tfrecord.write_shard(path, [bytes([i]) * size for i in range(n)])
  return path


def test_flipped_payload_byte_names_shard_and_offset(tmp_path):
  path = _write(tmp_path)
  record_size = 8 + 4 + 100 + 4
  with open(path, "r+b") as f:
    f.seek(3 * record_size + 12 + 50)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))
  reader = tfrecord.ShardReader(path)
  assert reader.read(2) == bytes([2]) * 100
  with pytest.raises(tfrecord.CorruptRecordError,
                     match=rf"s\.tfrecord: record 3 at byte offset {3 * record_size}: bad payload checksum"):
    reader.read(3)
  with pytest.raises(tfrecord.CorruptRecordError, match=f"byte offset {3 * record_size}"):
    list(tfrecord.iter_records(path))


def test_flipped_length_byte_is_caught(tmp_path):
  path = _write(tmp_path)
  with open(path, "r+b") as f:
    f.seek(116 + 1)
    f.write(b"\x01")
  with pytest.raises(tfrecord.CorruptRecordError, match="record 1 at byte offset 116"):
    tfrecord.ShardReader(path).read(1)
  with pytest.raises(tfrecord.CorruptRecordError, match="byte offset 116: bad length checksum"):
    list(tfrecord.iter_records(path))


def test_truncated_shard(tmp_path):
  path = _write(tmp_path)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 30)
  with pytest.raises(tfrecord.CorruptRecordError, match=r"s\.tfrecord: truncated shard.*record 9"):
    tfrecord.ShardReader(path)
  with pytest.raises(tfrecord.CorruptRecordError, match=r"truncated record at byte offset 1044"):
    list(tfrecord.iter_records(path))


def test_missing_index_message(tmp_path):
  path = _write(tmp_path)
  os.remove(tfrecord.index_path(path))
  with pytest.raises(FileNotFoundError, match="no index.*python -m mujo_jax.tfrecord"):
    tfrecord.ShardReader(path)


def test_header_layout():
  framed = tfrecord.frame(b"abc")
  assert struct.unpack("<Q", framed[:8])[0] == 3 and framed[12:15] == b"abc"


def test_per_record_verify_and_range_reads(tmp_path):
  rng = np.random.default_rng(1)
  payloads = [rng.bytes(int(n)) for n in rng.integers(50, 400, 12)]
  path = str(tmp_path / "s.tfrecord")
  tfrecord.write_shard(path, payloads)
  index = tfrecord.load_index(path)
  with open(path, "r+b") as f:  # flip a payload byte of record 4
    f.seek(int(index[4, 0]) + 7)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  reader = tfrecord.ShardReader(path)
  got = reader.read_many([3, 4, 5], verify=[True, True, False])
  assert got[0] == payloads[3] and got[2] == payloads[5]
  assert isinstance(got[1], tfrecord.CorruptRecordError) and "record 4" in str(got[1])
  unchecked = reader.read_many([4], verify=[False])[0]
  assert unchecked != payloads[4] and len(unchecked) == len(payloads[4])
  assert reader.read_ranges([(2, 5, 20), (9, 0, 3)]) == [payloads[2][5:25], payloads[9][:3]]
  a, b = bytearray(10), bytearray(6)
  reader.read_into([(7, 4, [memoryview(a), memoryview(b)])])
  assert bytes(a + b) == payloads[7][4:20]
  with pytest.raises(tfrecord.CorruptRecordError, match=r"record 2 at byte offset \d+: bytes"):
    reader.read_ranges([(2, len(payloads[2]) - 3, 4)])
  with pytest.raises(tfrecord.CorruptRecordError, match="record 1 at byte offset"):
    reader.read_into([(1, len(payloads[1]) - 1, [memoryview(bytearray(2))])])
  # The remote branch (one batched read_ranges, then copies), taken here on a local file.
  reader._fd = None
  a, b = bytearray(10), bytearray(6)
  reader.read_into([(7, 4, [memoryview(a), memoryview(b)]), (0, 0, [memoryview(bytearray(3))])])
  assert bytes(a + b) == payloads[7][4:20]


def test_index_whose_bytes_differ_from_its_digest_is_refused(tmp_path):
  path = _write(tmp_path)
  digest = tfrecord.index_sha256(path)
  want = tfrecord.load_index(path, sha256=digest)
  with open(tfrecord.index_path(path), "r+b") as f:  # record 9's length: 100 -> 96
    f.seek(-8, os.SEEK_END)
    f.write(b"\x60")
  assert tfrecord.load_index(path)[9, 1] == 96  # unchecked, it reads as a shorter record
  with pytest.raises(tfrecord.CorruptRecordError,
                     match=rf"s\.tfrecord\.index\.npy: sha256 \w+ is not the {digest}"):
    tfrecord.load_index(path, sha256=digest)
  assert want[9, 1] == 100
