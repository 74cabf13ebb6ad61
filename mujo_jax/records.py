"""The FiMAD record format: one tf.train.Example per window of a clip.

This module is the single definition that the writers in `data_prep/` and the
reader in `input_pipeline.py` share, so the two cannot drift apart.

Array fields are raw little-endian bytes in a one-element bytes_list, so parsing
a field is one `np.frombuffer` (and a whole batch is one `np.frombuffer` over the
joined buffers), not a walk over a float_list:

  imu           float16 [S, imu_rate*window, 6]   acc xyz (m/s^2, incl. gravity), gyr xyz (rad/s),
                                                  each sensor in its own frame
  pose          float16 [pose_rate*window, J, 3]  metres, root-relative
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
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow_datasets.proto import tf_example_pb2
from tensorflow_datasets.proto import tf_feature_pb2

from mujo_jax import storage
from mujo_jax.modalities import MODALITIES

FORMAT_VERSION = 1
INFO_FILENAME = "dataset_info.json"
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
    return _samples(self.imu_rate_hz, self.window_s)

  @property
  def pose_window(self) -> int:
    return _samples(self.pose_rate_hz, self.window_s)

  def array_specs(self) -> dict[str, ArraySpec]:
    return {
        "imu": ArraySpec((len(self.imu_locations), self.imu_window, len(self.imu_channels)),
                         SIGNAL_DTYPE),
        "pose": ArraySpec((self.pose_window, len(self.joint_names), 3), SIGNAL_DTYPE),
        "video": ArraySpec((self.video_steps, self.video_dim), SIGNAL_DTYPE),
        "text_ids": ArraySpec((self.text_len,), TOKEN_DTYPE),
    }

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["splits"] = {k: dataclasses.asdict(v) for k, v in self.splits.items()}
    d["array_specs"] = {k: {"shape": list(s.shape), "dtype": s.dtype.str}
                        for k, s in self.array_specs().items()}
    return d

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = INFO_FILENAME) -> "DatasetInfo":
    d = dict(d)
    version = d.get("format_version")
    if version != FORMAT_VERSION:
      raise RecordFormatError(
          f"{where}: format_version {version!r}, this reader understands {FORMAT_VERSION}")
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
    """Writes dataset_info.json atomically (it marks a dataset as complete)."""
    path = storage.join(directory, INFO_FILENAME)
    storage.write_json(path, self.to_json(), indent=2)
    return path

  @classmethod
  def load(cls, directory: str) -> "DatasetInfo":
    path = storage.join(directory, INFO_FILENAME)
    try:
      text = storage.read_text(path)
    except FileNotFoundError:
      raise FileNotFoundError(
          f"{path} not found: {directory} is not a complete FiMAD-format dataset "
          f"(make one with `python -m data_prep.make_demo --out_dir={directory}`)") from None
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise RecordFormatError(f"{path}: not valid JSON: {e}") from e
    return cls.from_json(d, where=path)

  def shard_paths(self, directory: str, split: str) -> list[str]:
    if split not in self.splits:
      raise KeyError(f"split {split!r} not in {storage.join(directory, INFO_FILENAME)}; "
                     f"it has {sorted(self.splits)}")
    return [storage.join(directory, s.file) for s in self.splits[split].shards]


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
  for modality, key in zip(MODALITIES, ("imu", "pose", "video", "text_ids")):
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
  if example.get("text_ids") is not None:
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


def decode_batch(info: DatasetInfo, payloads: Sequence[bytes],
                 where: Callable[[int], str] | None = None,
                 imu_location: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
  """Parses serialised examples into a dict of batched arrays.

  `where(i)` says where payload i came from (shard and offset) for errors; it is
  called only on error. Missing modalities come back as zeros, modality_mask 0.
  `imu_location`, if given, maps the batch's imu_location_mask [B, S] to one
  location per example [B] (-1: none); then only that location is copied, `imu`
  is [B, T, 6] and `imu_location` [B] is added (a modality_mask of 0 where -1).
  Copying one location instead of all S matters: fresh memory is what the
  pipeline spends most of its time on.
  """
  specs = info.array_specs()
  num_loc = len(info.imu_locations)
  n = len(payloads)
  ints = {"text_len": [], "label": [], "window_index": [], "modality_mask": [],
          "imu_location_mask": []}
  clip_ids, features = [], []
  for i, payload in enumerate(payloads):
    try:
      fmap = tf_example_pb2.Example.FromString(payload).features.feature
    except Exception as e:  # protobuf raises DecodeError, a private type
      raise RecordFormatError(f"{_where(where, i)}: not a tf.train.Example: {e}") from e
    try:
      mask = list(fmap["modality_mask"].int64_list.value)
      loc_mask = list(fmap["imu_location_mask"].int64_list.value)
      clip_ids.append(fmap["clip_id"].bytes_list.value[0])
      ints["label"].append(fmap["label"].int64_list.value[0])
      ints["window_index"].append(fmap["window_index"].int64_list.value[0])
    except (KeyError, IndexError) as e:
      raise RecordFormatError(f"{_where(where, i)}: missing field {e}") from e
    if len(mask) != len(MODALITIES) or len(loc_mask) != num_loc:
      raise RecordFormatError(f"{_where(where, i)}: modality_mask/imu_location_mask have "
                              f"{len(mask)}/{len(loc_mask)} entries, expected "
                              f"{len(MODALITIES)}/{num_loc}")
    ints["modality_mask"].append(mask)
    ints["imu_location_mask"].append(loc_mask)
    ints["text_len"].append(fmap["text_len"].int64_list.value[0] if mask[3] else 0)
    features.append(fmap)
  widths = {"modality_mask": (len(MODALITIES),), "imu_location_mask": (num_loc,)}
  batch = {k: np.asarray(v, np.int32).reshape((n,) + widths.get(k, ())) for k, v in ints.items()}
  shapes = {k: s.shape for k, s in specs.items()}
  location = None
  if imu_location is not None:
    location = np.asarray(imu_location(batch["imu_location_mask"]), np.int32)
    batch["imu_location"] = location
    batch["modality_mask"][:, 0] &= location >= 0
    shapes["imu"] = specs["imu"].shape[1:]
  # Filled row by row straight from each record's bytes: one copy per field.
  arrays = {k: np.zeros((n,) + shapes[k], specs[k].dtype) for k in specs}
  rows = {k: v.reshape(n, int(np.prod(v.shape[1:]))) for k, v in arrays.items()}
  nbytes = {k: s.nbytes for k, s in specs.items()}
  present = batch["modality_mask"]
  for i, fmap in enumerate(features):
    for j, key in enumerate(specs):
      if not present[i, j]:
        continue
      values = fmap[key].bytes_list.value if key in fmap else ()
      value = values[0] if len(values) else None
      if value is None or len(value) != nbytes[key]:
        got = "no value" if value is None else f"{len(value)} bytes"
        raise RecordFormatError(
            f"{_where(where, i)}: field {key!r} has {got}, expected {nbytes[key]} bytes "
            f"({specs[key].dtype} {list(specs[key].shape)} per dataset_info.json)")
      flat = np.frombuffer(value, specs[key].dtype)
      if key == "imu" and location is not None:
        flat = flat.reshape(num_loc, -1)[location[i]]
      rows[key][i] = flat
  batch.update(arrays)
  batch["clip_id"] = np.asarray(clip_ids, dtype=object)
  return batch


def _where(where: Callable[[int], str] | None, i: int) -> str:
  return where(i) if where is not None else f"record {i} of the batch"
