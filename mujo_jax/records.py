"""The FiMAD record format: one tf.train.Example per window of a clip.

This module is the single definition that the writers in `data_prep/` and the
reader in `input_pipeline.py` share, so the two cannot drift apart.

Array fields are raw little-endian bytes in a one-element bytes_list, so parsing
a field is one `np.frombuffer` (and a whole batch is one `np.frombuffer` over the
joined buffers), not a walk over a float_list:

  imu           float16 [S, imu_rate*window, 6]   acc xyz (m/s^2, incl. gravity), gyr xyz (rad/s),
                                                  each sensor in its own frame
  pose          float16 [pose_rate*window, J, 3]  metres, root-relative (dataset_info pose_units)
  (with DatasetInfo.trial_steps > 0 both time axes are trial_steps long instead: one whole
  trial per record, time-normalised)
  video         float16 [video_steps, video_dim]  per-step video features
  text_ids      int32   [text_len]                token ids, padded with pad_id
  text_len      int64                             number of real tokens
  imu_location_mask int64 [S]                     1 where that sensor location holds data (real or simulated)
  modality_mask int64   [4]                       imu, pose, video, text present (1) or not (0)
  label         int64                             class index, -1 if unknown
  clip_id       bytes
  window_index  int64                             window position within its clip

A modality that a record lacks is simply absent (its mask entry 0); the reader
fills zeros so batches keep fixed shapes. `dataset_info.json` beside the shards
describes shapes, rates, names, tokenizer and splits; the reader validates every
record against it.

Integrity: every byte of a dataset is covered by a check that names the file.
Shard records carry TFRecord CRCs (tfrecord.py; checked unless crc_check="off",
the only mode where a flipped payload byte can pass unnoticed). Each shard's
offset index has its sha256 in dataset_info.json (ShardInfo.index_sha256). And
dataset_info.json is sealed (DatasetInfo.save, _info_text): the file is exactly
one canonical serialisation of its content, ending in `"sha256"` of that same
serialisation without the digest. The reader re-serialises what it parsed and
requires both the bytes and the digest to match, so even a change that leaves
valid JSON (a digit, a letter, a space) is refused.

Reading does not parse records with protobuf: the writer serialises
deterministically (map keys sorted, ints packed), so `scan_records` walks a
record's few entry headers to find each array's byte offset and the small
fields, and `copy_arrays` copies each array with one `np.frombuffer`. Knowing
the offsets, a reader can also fetch just the bytes it needs from the file
(input_pipeline.py: one IMU location of S). Records in any other wire layout
are parsed by protobuf instead, and invalid ones are rejected
(RecordFormatError naming the record), never misread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow_datasets.proto import tf_example_pb2
from tensorflow_datasets.proto import tf_feature_pb2

from mujo_jax import storage
from mujo_jax.modalities import ARRAY_KEYS
from mujo_jax.modalities import INPUT_KEYS
from mujo_jax.modalities import MODALITIES

FORMAT_VERSION = 2  # 2: index digests in ShardInfo, dataset_info.json sealed with a sha256
INFO_FILENAME = "dataset_info.json"
INFO_DIGEST_KEY = "sha256"  # the last key of dataset_info.json (see _info_text)
IMU_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
IMU_UNITS = {"acc": "m/s^2 (specific force, gravity included)", "gyr": "rad/s"}
SIGNAL_DTYPE = np.dtype("<f2")
TOKEN_DTYPE = np.dtype("<i4")


class RecordFormatError(ValueError):
  """A record or dataset_info.json that does not match the format."""


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape)) * self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  file: str
  num_records: int
  index_sha256: str | None = None  # of its .index.npy file; None: no index written


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  num_examples: int
  num_clips: int
  shards: tuple[ShardInfo, ...]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Everything a reader needs to know about a directory of FiMAD shards."""
  name: str
  imu_locations: tuple[str, ...]
  joint_names: tuple[str, ...]
  class_names: tuple[str, ...]
  tokenizer: str
  vocab_size: int
  pad_id: int
  skeleton: str = "h36m17"
  window_s: float = 5.0
  # > 0: each record is one whole trial resampled to this many steps (imu and pose alike), as
  # in protocols that time-normalise trials; the rates then describe the source, not the
  # record, and window_s does not apply. 0: real-time windows of window_s.
  trial_steps: int = 0
  imu_rate_hz: float = 50.0
  pose_rate_hz: float = 25.0
  video_steps: int = 8
  video_dim: int = 1536
  video_features: str = "HERO: CLIP ViT-B/32 (512) + S3D (1024) per step"
  text_len: int = 64
  imu_channels: tuple[str, ...] = IMU_CHANNELS
  imu_units: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(IMU_UNITS))
  pose_units: str = "metres, root-relative"
  source: str = ""
  splits: Mapping[str, SplitInfo] = dataclasses.field(default_factory=dict)
  format_version: int = FORMAT_VERSION

  @property
  def imu_window(self) -> int:
    return self._steps(self.imu_rate_hz)

  @property
  def pose_window(self) -> int:
    return self._steps(self.pose_rate_hz)

  def _steps(self, rate_hz: float) -> int:
    if self.trial_steps:
      if not isinstance(self.trial_steps, int) or self.trial_steps < 0:
        raise RecordFormatError(f"trial_steps {self.trial_steps!r} is not a whole number >= 0")
      return self.trial_steps
    return _samples(rate_hz, self.window_s)

  def array_specs(self) -> dict[str, ArraySpec]:
    return {
        INPUT_KEYS["imu"]: ArraySpec(
            (len(self.imu_locations), self.imu_window, len(self.imu_channels)), SIGNAL_DTYPE),
        INPUT_KEYS["pose"]: ArraySpec((self.pose_window, len(self.joint_names), 3),
                                      SIGNAL_DTYPE),
        INPUT_KEYS["video"]: ArraySpec((self.video_steps, self.video_dim), SIGNAL_DTYPE),
        INPUT_KEYS["text"]: ArraySpec((self.text_len,), TOKEN_DTYPE),
    }

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["splits"] = {k: dataclasses.asdict(v) for k, v in self.splits.items()}
    d["array_specs"] = {k: {"shape": list(s.shape), "dtype": s.dtype.str}
                        for k, s in self.array_specs().items()}
    return d

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = INFO_FILENAME) -> "DatasetInfo":
    """The info of a parsed dataset_info.json; its seal is checked by `load`, not here."""
    d = dict(d)
    _check_version(d, where)
    d.pop(INFO_DIGEST_KEY, None)
    stored_specs = d.pop("array_specs", None)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise RecordFormatError(f"{where}: unknown keys {unknown}")
    try:
      splits = {
          name: SplitInfo(num_examples=s["num_examples"], num_clips=s["num_clips"],
                          shards=tuple(ShardInfo(**sh) for sh in s["shards"]))
          for name, s in d.pop("splits", {}).items()}
      for key in ("imu_locations", "joint_names", "class_names", "imu_channels"):
        if key in d:
          d[key] = tuple(d[key])
      info = cls(**d, splits=splits)
    except (KeyError, TypeError) as e:
      raise RecordFormatError(f"{where}: malformed dataset info: {e}") from e
    if stored_specs is not None:
      derived = {k: {"shape": list(s.shape), "dtype": s.dtype.str}
                 for k, s in info.array_specs().items()}
      if stored_specs != derived:
        raise RecordFormatError(
            f"{where}: array_specs {stored_specs} disagree with the shapes its "
            f"settings imply {derived}")
    return info

  def save(self, directory: str) -> str:
    """Writes dataset_info.json, sealed, atomically (it marks a dataset as complete)."""
    path = storage.join(directory, INFO_FILENAME)
    storage.write_text(path, seal_info_json(self.to_json()))
    return path

  @classmethod
  def load(cls, directory: str) -> "DatasetInfo":
    """Reads dataset_info.json; RecordFormatError naming it if its seal is broken."""
    path = storage.join(directory, INFO_FILENAME)
    try:
      blob = storage.read_bytes(path)
    except FileNotFoundError:
      raise FileNotFoundError(
          f"{path} not found: {directory} is not a complete FiMAD-format dataset "
          f"(make one with `python -m data_prep.make_demo --out_dir={directory}` or a "
          f"converter in data_prep/, or point --config.data.dir at a dataset; an "
          f"interrupted converter leaves none: it is written last)") from None
    try:
      text = blob.decode("ascii")  # the writer escapes everything else
      d = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise RecordFormatError(f"{path}: not ASCII JSON (a damaged file?): {e}") from e
    if not isinstance(d, dict):
      raise RecordFormatError(f"{path}: not a JSON object (a damaged file?)")
    _check_version(d, path)
    _check_seal(d, text, path)
    return cls.from_json(d, where=path)

  def shard_paths(self, directory: str, split: str) -> list[str]:
    if split not in self.splits:
      raise KeyError(f"split {split!r} not in {storage.join(directory, INFO_FILENAME)}; "
                     f"it has {sorted(self.splits)}")
    return [storage.join(directory, s.file) for s in self.splits[split].shards]


def _check_version(d: Mapping[str, Any], where: str) -> None:
  """Before the seal: another version may seal differently, or not at all."""
  version = d.get("format_version")
  if version != FORMAT_VERSION:
    raise RecordFormatError(
        f"{where}: format_version {version!r}, this reader understands {FORMAT_VERSION} "
        "(a dataset written by another version of mujo_jax, or a damaged file): rebuild it "
        "with this version's data_prep, or run the mujo_jax version that wrote it")


def _info_text(d: Mapping[str, Any]) -> str:
  """The one serialisation of dataset_info.json: 2-space indent, ASCII only
  (non-ASCII escaped), keys in the order given, a final newline."""
  return json.dumps(d, indent=2, ensure_ascii=True, allow_nan=False) + "\n"


def seal_info_json(d: Mapping[str, Any]) -> str:
  """The text of dataset_info.json for `d` (DatasetInfo.to_json): _info_text of
  d followed by INFO_DIGEST_KEY, the sha256 of _info_text(d)."""
  d = {k: v for k, v in d.items() if k != INFO_DIGEST_KEY}
  return _info_text({**d, INFO_DIGEST_KEY: _info_digest(d)})


def _info_digest(d: Mapping[str, Any]) -> str:
  return hashlib.sha256(_info_text(d).encode()).hexdigest()


def _check_seal(d: Mapping[str, Any], text: str, where: str) -> None:
  digest = d.get(INFO_DIGEST_KEY)
  if not isinstance(digest, str):
    raise RecordFormatError(f"{where}: no {INFO_DIGEST_KEY!r} digest (a damaged file?)")
  if text == seal_info_json(d):
    return
  if _info_digest({k: v for k, v in d.items() if k != INFO_DIGEST_KEY}) != digest:
    problem = f"its content does not match its {INFO_DIGEST_KEY} digest"
  else:
    problem = "its bytes are not the form its writer made (spacing, key order or escapes)"
  raise RecordFormatError(f"{where}: {problem}: the file is damaged or was edited "
                          "(write it with DatasetInfo.save)")


def _samples(rate_hz: float, seconds: float) -> int:
  n = rate_hz * seconds
  if abs(n - round(n)) > 1e-6:
    raise RecordFormatError(f"rate {rate_hz} Hz x window {seconds} s is not a whole number of samples")
  return int(round(n))


def _bytes_feature(value: bytes) -> tf_feature_pb2.Feature:
  return tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=[value]))


def _int_feature(values: Sequence[int]) -> tf_feature_pb2.Feature:
  return tf_feature_pb2.Feature(int64_list=tf_feature_pb2.Int64List(value=list(values)))


def encode_example(info: DatasetInfo, example: Mapping[str, Any]) -> bytes:
  """Serialises one window. `example` holds the arrays of the modalities it has
  (any of imu, pose, video, text_ids+text_len), `label`, `clip_id`,
  `window_index` and optionally `imu_location_mask` (default: all available)."""
  clip_id = example.get("clip_id")
  if not clip_id:
    raise RecordFormatError("example has no clip_id")
  where = f"clip {clip_id!r} window {example.get('window_index')}"
  specs = info.array_specs()
  features = {}
  present = []
  for key in ARRAY_KEYS:
    value = example.get(key)
    present.append(int(value is not None))
    if value is None:
      continue
    spec = specs[key]
    value = np.asarray(value)
    if value.shape != spec.shape:
      raise RecordFormatError(f"{where}: {key} has shape {value.shape}, expected {spec.shape}")
    if spec.dtype.kind == "f":
      if not np.all(np.isfinite(value)):
        raise RecordFormatError(f"{where}: {key} has non-finite values")
      if np.abs(value).max(initial=0.0) > np.finfo(np.float16).max:
        raise RecordFormatError(f"{where}: {key} overflows float16")
    elif np.any((value < 0) | (value >= info.vocab_size)):
      raise RecordFormatError(f"{where}: {key} has ids outside [0, {info.vocab_size})")
    features[key] = _bytes_feature(value.astype(spec.dtype).tobytes())
  if example.get(INPUT_KEYS["text"]) is not None:
    text_len = int(example["text_len"])
    if not 0 < text_len <= info.text_len:
      raise RecordFormatError(f"{where}: text_len {text_len} outside (0, {info.text_len}]")
    features["text_len"] = _int_feature([text_len])
  if not any(present):
    raise RecordFormatError(f"{where}: no modality present")
  loc_mask = example.get("imu_location_mask")
  loc_mask = [1] * len(info.imu_locations) if loc_mask is None else [int(v) for v in loc_mask]
  if len(loc_mask) != len(info.imu_locations):
    raise RecordFormatError(f"{where}: imu_location_mask has {len(loc_mask)} entries, "
                            f"expected {len(info.imu_locations)}")
  label = int(example.get("label", -1))
  if not -1 <= label < len(info.class_names):
    raise RecordFormatError(f"{where}: label {label} outside [-1, {len(info.class_names)})")
  features["imu_location_mask"] = _int_feature(loc_mask)
  features["modality_mask"] = _int_feature(present)
  features["label"] = _int_feature([label])
  features["window_index"] = _int_feature([int(example.get("window_index", 0))])
  features["clip_id"] = _bytes_feature(str(clip_id).encode())
  proto = tf_example_pb2.Example(features=tf_feature_pb2.Features(feature=features))
  return proto.SerializeToString(deterministic=True)  # map order fixed: same bytes every run


_ARRAY_KEYS_BYTES = tuple(k.encode() for k in ARRAY_KEYS)
SMALL_KEYS = ("text_len", "label", "window_index", "modality_mask", "imu_location_mask")


def scan_records(info: DatasetInfo, payloads: Sequence[bytes],
                 where: Callable[[int], str] | None = None, *,
                 use_protobuf: bool = False) -> dict[str, np.ndarray]:
  """The small fields of each record and where its arrays lie in it, without copying them.

  Returns `offsets` int64 [B, 4] (byte offset of imu, pose, video, text_ids
  inside each payload; -1 where absent), `clip_id` object [B] and the int32
  SMALL_KEYS (`modality_mask` [B, 4], `imu_location_mask` [B, S], the rest
  [B]); `text_len` is 0 where text is absent. With these, a record's arrays are
  read with `np.frombuffer` at known offsets, or fetched as byte ranges from the
  file without reading the rest of the record.

  Records from our writer are walked entry by entry (`_scan_fixed_layout`: a few
  varints per field, no copies). Anything else that the walk does not accept
  exactly (another key order or extra features are fine; other wire fields,
  unpacked ints, several values, corruption are not) is parsed by protobuf, which raises
  RecordFormatError naming `where(i)` if the record is invalid; its array
  offsets are then found by searching the payload for each value's bytes, so
  whatever is read there is byte for byte that value.
  """
  specs = info.array_specs()
  nbytes = tuple(specs[k].nbytes for k in ARRAY_KEYS)
  num_loc = len(info.imu_locations)
  n = len(payloads)
  offsets = np.full((n, len(ARRAY_KEYS)), -1, np.int64)
  small = np.zeros((n, 3 + len(MODALITIES) + num_loc), np.int64)
  clip_ids = np.empty(n, dtype=object)
  for i, payload in enumerate(payloads):
    scanned = None if use_protobuf else _scan_fixed_layout(payload, nbytes, num_loc)
    if scanned is None:
      scanned = _scan_with_protobuf(info, payload, nbytes, lambda: _where(where, i))
    offsets[i], small[i], clip_ids[i] = scanned
  facts = {"offsets": offsets, "clip_id": clip_ids}
  facts["modality_mask"] = small[:, 3:3 + len(MODALITIES)].astype(np.int32)
  facts["imu_location_mask"] = small[:, 3 + len(MODALITIES):].astype(np.int32)
  for j, key in enumerate(("text_len", "label", "window_index")):
    facts[key] = small[:, j].astype(np.int32)
  return facts


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  byte = buf[pos]
  if byte < 0x80:
    return byte, pos + 1
  value, shift = 0, 0
  while True:
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7
    if shift > 63:
      raise ValueError("varint too long")


def _packed_int64s(buf: bytes, start: int, stop: int) -> list[int]:
  values = list(buf[start:stop])
  if max(values, default=0) < 0x80:
    return values  # one byte each: masks, small labels (the common case)
  values, pos = [], start
  while pos < stop:
    value, pos = _varint(buf, pos)
    values.append(value - (1 << 64) if value >= 1 << 63 else value)
  if pos != stop:
    raise ValueError("varint runs past its field")
  return values


# Wire bytes of tf.train.Example as the writer emits it: Example.features (field 1),
# Features.feature map entries (field 1) of key (field 1) and Feature (field 2),
# Feature.bytes_list (field 1) or int64_list (field 3), and their one value (field 1,
# packed for ints). All length-delimited, so every tag is (field << 3) | 2.
_TAG_1, _TAG_2, _TAG_INT64_LIST = 0x0A, 0x12, 0x1A


def _scan_fixed_layout(payload: bytes, nbytes: tuple[int, ...], num_loc: int):
  """(offsets [4], small ints, clip_id) of a record in the writer's layout, else None."""
  try:
    if not payload or payload[0] != _TAG_1:
      return None
    length, pos = _varint(payload, 1)
    end = len(payload)
    if pos + length != end:
      return None
    fields = {}
    while pos < end:
      if payload[pos] != _TAG_1:
        return None
      length, pos = _varint(payload, pos + 1)
      entry_end = pos + length
      key_len = payload[pos + 1]
      if payload[pos] != _TAG_1 or key_len >= 0x80:
        return None
      key = payload[pos + 2:pos + 2 + key_len]
      pos += 2 + key_len
      if payload[pos] != _TAG_2:
        return None
      length, pos = _varint(payload, pos + 1)
      if pos + length != entry_end:
        return None
      kind = payload[pos]
      list_len, pos = _varint(payload, pos + 1)
      if list_len == 0 or pos + list_len != entry_end or payload[pos] != _TAG_1:
        return None
      value_len, pos = _varint(payload, pos + 1)
      if pos + value_len != entry_end or entry_end > end:
        return None
      fields[key] = (kind, pos, value_len)
      pos = entry_end
    ints = {}
    for key, count in ((b"modality_mask", len(MODALITIES)), (b"imu_location_mask", num_loc),
                       (b"label", 1), (b"window_index", 1)):
      kind, start, length = fields[key]
      values = _packed_int64s(payload, start, start + length)
      if kind != _TAG_INT64_LIST or len(values) != count:
        return None
      ints[key] = values
    mask = ints[b"modality_mask"]
    text_len = 0
    if mask[3]:
      kind, start, length = fields[b"text_len"]
      values = _packed_int64s(payload, start, start + length)
      if kind != _TAG_INT64_LIST or len(values) != 1:
        return None
      text_len = values[0]
    offsets = [-1] * len(ARRAY_KEYS)
    for j, key in enumerate(_ARRAY_KEYS_BYTES):
      if mask[j]:
        kind, start, length = fields[key]
        if kind != _TAG_1 or length != nbytes[j]:
          return None
        offsets[j] = start
    kind, start, length = fields[b"clip_id"]
    if kind != _TAG_1:
      return None
  except (KeyError, IndexError, ValueError):
    return None
  small = [text_len, ints[b"label"][0], ints[b"window_index"][0]] + mask + ints[b"imu_location_mask"]
  return offsets, small, payload[start:start + length]


def _scan_with_protobuf(info: DatasetInfo, payload: bytes, nbytes: tuple[int, ...], where):
  """What _scan_fixed_layout returns, for any valid Example; RecordFormatError otherwise."""
  specs = info.array_specs()
  num_loc = len(info.imu_locations)
  try:
    fmap = tf_example_pb2.Example.FromString(payload).features.feature
  except Exception as e:  # protobuf raises DecodeError, a private type
    raise RecordFormatError(f"{where()}: not a tf.train.Example: {e}") from e
  try:
    mask = list(fmap["modality_mask"].int64_list.value)
    loc_mask = list(fmap["imu_location_mask"].int64_list.value)
    clip_id = fmap["clip_id"].bytes_list.value[0]
    label = fmap["label"].int64_list.value[0]
    window_index = fmap["window_index"].int64_list.value[0]
  except (KeyError, IndexError) as e:
    raise RecordFormatError(f"{where()}: missing field {e}") from e
  if len(mask) != len(MODALITIES) or len(loc_mask) != num_loc:
    raise RecordFormatError(f"{where()}: modality_mask/imu_location_mask have "
                            f"{len(mask)}/{len(loc_mask)} entries, expected "
                            f"{len(MODALITIES)}/{num_loc}")
  try:
    text_len = fmap["text_len"].int64_list.value[0] if mask[3] else 0
  except (KeyError, IndexError) as e:
    raise RecordFormatError(f"{where()}: missing field {e}") from e
  offsets = [-1] * len(ARRAY_KEYS)
  for j, key in enumerate(ARRAY_KEYS):
    if not mask[j]:
      continue
    values = fmap[key].bytes_list.value if key in fmap else ()
    value = values[0] if len(values) else None
    if value is None or len(value) != nbytes[j]:
      got = "no value" if value is None else f"{len(value)} bytes"
      raise RecordFormatError(
          f"{where()}: field {key!r} has {got}, expected {nbytes[j]} bytes "
          f"({specs[key].dtype} {list(specs[key].shape)} per dataset_info.json)")
    offsets[j] = payload.find(value)  # the value's bytes occur in the payload, so found
  return offsets, [text_len, label, window_index] + mask + loc_mask, clip_id


def array_shapes(info: DatasetInfo, one_imu_location: bool) -> dict[str, tuple[int, ...]]:
  """Per-example shapes of the ARRAY_KEYS in a batch: imu [T, 6] when one location is kept."""
  shapes = {k: s.shape for k, s in info.array_specs().items()}
  if one_imu_location:
    shapes["imu"] = shapes["imu"][1:]
  return shapes


def field_ranges(info: DatasetInfo, offsets: np.ndarray,
                 location: np.ndarray | None) -> np.ndarray:
  """[B, 4, 2] (offset in payload, byte count) of what a batch needs of each array field.

  offsets: [B, 4] from scan_records (-1: absent, count 0). location: [B] IMU location
  per record (-1: none, count 0) or None for all of them.
  """
  specs = info.array_specs()
  counts = np.broadcast_to(np.asarray([specs[k].nbytes for k in ARRAY_KEYS], np.int64),
                           offsets.shape).copy()
  starts = offsets.copy()
  if location is not None:
    per_location = specs["imu"].nbytes // len(info.imu_locations)
    counts[:, 0] = np.where(location >= 0, per_location, 0)
    starts[:, 0] += np.maximum(location, 0) * per_location
  counts[offsets < 0] = 0
  return np.stack([starts, counts], axis=-1)


def decode_batch(info: DatasetInfo, payloads: Sequence[bytes],
                 where: Callable[[int], str] | None = None,
                 imu_location: Callable[[np.ndarray], np.ndarray] | None = None, *,
                 use_protobuf: bool = False) -> dict[str, np.ndarray]:
  """Parses serialised examples into a dict of batched arrays.

  `where(i)` says where payload i came from (shard and offset) for errors; it is
  called only on error. Missing modalities come back as zeros, modality_mask 0.
  `imu_location`, if given, maps the batch's imu_location_mask [B, S] to one
  location per example [B] (-1: none); then only that location is copied, `imu`
  is [B, T, 6] and `imu_location` [B] is added (a modality_mask of 0 where -1).
  Copying one location instead of all S matters: fresh memory is what the
  pipeline spends most of its time on.

  Records are located by scan_records (no protobuf parse for our writer's
  records; `use_protobuf` forces it, as a reference) and each array is one
  `np.frombuffer` copy from its payload.
  """
  facts = scan_records(info, payloads, where, use_protobuf=use_protobuf)
  batch = {k: facts[k] for k in SMALL_KEYS}
  location = None
  if imu_location is not None:
    location = np.asarray(imu_location(batch["imu_location_mask"]), np.int32)
    batch["imu_location"] = location
    batch["modality_mask"][:, 0] &= location >= 0
  batch.update(copy_arrays(info, [[(0, p)] for p in payloads],
                           field_ranges(info, facts["offsets"], location), location is not None))
  batch["clip_id"] = facts["clip_id"]
  return batch


def new_arrays(info: DatasetInfo, n: int, one_imu_location: bool,
               zeros=np.zeros) -> dict[str, np.ndarray]:
  """Zeroed batch arrays [n, ...] of the ARRAY_KEYS (zeros stand in for absent fields).

  zeros(shape, dtype): the allocator, e.g. one that places them in shared memory.
  """
  specs = info.array_specs()
  return {k: zeros((n,) + shape, specs[k].dtype)
          for k, shape in array_shapes(info, one_imu_location).items()}


def copy_arrays(info: DatasetInfo, pieces: Sequence[Sequence[tuple[int, bytes]] | None],
                ranges: np.ndarray, one_imu_location: bool,
                out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """Batch arrays filled from `ranges` [B, 4, 2] (field_ranges) of each record.

  pieces[i]: (offset in the payload, bytes) of what was read of record i, e.g.
  [(0, payload)], or None to leave row i to the caller; each field must lie in
  one piece. out: arrays from new_arrays to fill (default: new ones). Every
  field is one `np.frombuffer` straight into its row of the batch array.
  """
  n = len(pieces)
  arrays = new_arrays(info, n, one_imu_location) if out is None else out
  rows = byte_rows(arrays)
  for i, (have, fields) in enumerate(zip(pieces, ranges.tolist())):
    if have is None:
      continue
    for row, (offset, count) in zip(rows, fields):
      if not count:
        continue
      for start, blob in have:
        if start <= offset and offset + count <= start + len(blob):
          row[i] = np.frombuffer(blob, np.uint8, count, offset - start)
          break
      else:
        raise RecordFormatError(f"record {i} of the batch: bytes {offset}..{offset + count} "
                                "were not read (or the record is shorter)")
  return arrays


def byte_rows(arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
  """uint8 [B, bytes per example] views of the ARRAY_KEYS, for copies and reads into rows."""
  return [arrays[k].reshape(len(arrays[k]), arrays[k][0].nbytes // arrays[k].itemsize
                            if len(arrays[k]) else 0).view(np.uint8) for k in ARRAY_KEYS]


def _where(where: Callable[[int], str] | None, i: int) -> str:
  return where(i) if where is not None else f"record {i} of the batch"
