"""Writes a FiMAD-format dataset directory: indexed TFRecord shards + dataset_info.json.

Every converter (the demo generator, real-data converters) ends here, so all
datasets share one layout (DIR local or gs://):
  DIR/{split}-{k:05d}.tfrecord            shards of `records_per_shard` records
  DIR/{split}-{k:05d}.tfrecord.index.npy  their offset indexes (sha256 in dataset_info.json)
  DIR/dataset_info.json                   written last: its presence marks the dataset complete;
                                          sealed with its own sha256 (records.py)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from mujo_jax import records
from mujo_jax import storage
from mujo_jax import tfrecord


class DatasetWriter:
  """Collects splits, then `finish()` writes dataset_info.json.

  Usage:
    writer = DatasetWriter(out_dir, info)      # info.splits is filled in here
    writer.write_split("train", examples)      # examples: dicts for records.encode_example
    writer.finish()
  """

  def __init__(self, out_dir: str, info: records.DatasetInfo, records_per_shard: int = 512):
    if records_per_shard < 1:
      raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    storage.makedirs(out_dir)
    # The directory is incomplete until finish() rewrites it.
    storage.remove(storage.join(out_dir, records.INFO_FILENAME))
    self.out_dir = out_dir
    self.info = dataclasses.replace(info, splits={})
    self.records_per_shard = records_per_shard
    self._splits: dict[str, records.SplitInfo] = {}
    self._clips: dict[str, set[str]] = {}

  def write_split(self, split: str, examples: Iterable[Mapping[str, Any]]) -> records.SplitInfo:
    """Encodes and writes every example of a split; windows of one clip must
    all belong to this split (checked across splits in `finish`)."""
    if split in self._splits:
      raise ValueError(f"split {split!r} written twice")
    shards, clips, buffer = [], set(), []

    def flush():
      name = f"{split}-{len(shards):05d}.tfrecord"
      written = tfrecord.write_shard(storage.join(self.out_dir, name), buffer)
      shards.append(records.ShardInfo(file=name, num_records=written.num_records,
                                      index_sha256=written.index_sha256))
      buffer.clear()

    for example in examples:
      buffer.append(records.encode_example(self.info, example))
      clips.add(str(example["clip_id"]))
      if len(buffer) == self.records_per_shard:
        flush()
    if buffer:
      flush()
    if not shards:
      raise ValueError(f"split {split!r} has no examples")
    info = records.SplitInfo(num_examples=sum(s.num_records for s in shards),
                             num_clips=len(clips), shards=tuple(shards))
    self._splits[split] = info
    self._clips[split] = clips
    return info

  def finish(self) -> records.DatasetInfo:
    names = sorted(self._splits)
    for i, a in enumerate(names):
      for b in names[i + 1:]:
        both = self._clips[a] & self._clips[b]
        if both:
          raise ValueError(f"clips in both {a!r} and {b!r} splits, e.g. {sorted(both)[:3]}")
    info = dataclasses.replace(self.info, splits=dict(self._splits))
    info.save(self.out_dir)
    return info
