"""FiMAD's official clip split file: {"train": [clip ids], "val": [clip ids]}.

Clip ids look like `youtubeID___chapterIndex`. Splits are assigned per clip, so
the windows of one clip never straddle splits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mujo_jax import storage


def load_split(path: str) -> dict[str, str]:
  """Reads a split file -> {clip_id: split name}; rejects malformed files."""
  try:
    data = storage.read_json(path)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from e
  if not isinstance(data, dict) or not data:
    raise ValueError(f"{path}: expected an object of split name -> list of clip ids")
  clip_split: dict[str, str] = {}
  for split, clips in data.items():
    if not isinstance(clips, list) or not all(isinstance(c, str) for c in clips):
      raise ValueError(f"{path}: split {split!r} must be a list of clip id strings")
    for clip in clips:
      if clip in clip_split:
        raise ValueError(f"{path}: clip {clip!r} is in both {clip_split[clip]!r} and {split!r}")
      clip_split[clip] = split
  return clip_split


def write_split(path: str, clip_split: Mapping[str, str]) -> None:
  """Writes {clip_id: split} in the official format (sorted for stable diffs)."""
  by_split: dict[str, list[str]] = {}
  for clip, split in clip_split.items():
    by_split.setdefault(split, []).append(clip)
  storage.write_json(path, {s: sorted(c) for s, c in sorted(by_split.items())}, indent=4)

