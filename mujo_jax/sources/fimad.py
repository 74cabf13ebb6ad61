"""FiMAD-style sources: a JSON Lines manifest of clips with 3D pose, video features and language.

The manifest has one clip per line; paths are relative to `data_root` (default: the manifest's
directory):
  {"clip_id": "youtubeID___3", "pose": "pose/youtubeID___3.npy", "pose_fps": 25,
   "skeleton": "h36m17", "video": "video/youtubeID___3.npy", "video_rate_hz": 1.6,
   "language": {"chapter": ..., "normalized_chapter": ..., "subtitles": ..., "description": ...},
   "label": "squats"}
  pose   .npy float [T, J, 3], metres, J = the skeleton's joints (mujo_jax/sim/skeletons.py; all
         clips share one skeleton), in a world frame whose vertical the caller states. NaN marks
         a missing joint.
  video  optional .npy float [T_v, D] (HERO: CLIP-512 + S3D-1024), feature j covering
         [j, j+1) / video_rate_hz seconds of the clip, which starts with the first pose frame.
  language  the MuJo authors' language_data.json entry; the text is the non-empty fields of
         `text_fields` joined by ". " (default "{normalized_chapter}. {description}").
  label  optional class name.
Bad input raises SourceError naming the clip and the file (or manifest line).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import numpy as np

from mujo_jax.sim import skeletons
from mujo_jax.sources import errors

TEXT_FIELDS = ("normalized_chapter", "description")
MANIFEST_KEYS = {"clip_id", "pose", "pose_fps", "skeleton", "video", "video_rate_hz", "language",
                 "label"}


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """One validated manifest line; paths are absolute."""
  clip_id: str
  pose_path: str
  pose_fps: float
  skeleton: str
  video_path: str | None
  video_rate_hz: float | None
  text: str | None
  label: str | None


def clip_text(language: dict | None, fields=TEXT_FIELDS) -> str | None:
  """The non-empty `fields` of a language record joined by ". " (None if there are none);
  normalized_chapter falls back to chapter."""
  if not language:
    return None
  parts = []
  for field in fields:
    value = language.get(field)
    if field == "normalized_chapter" and not value:
      value = language.get("chapter")
    if isinstance(value, str) and value.strip():
      parts.append(value.strip().rstrip("."))
  return ". ".join(parts) if parts else None


def read_manifest(path: str, data_root: str | None = None,
                  text_fields=TEXT_FIELDS) -> list[ClipSpec]:
  """Parses and checks the manifest: keys, types, skeletons, that the files exist."""
  root = data_root or os.path.dirname(os.path.abspath(path))
  specs, seen = [], {}
  with open(path) as f:
    lines = f.readlines()
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    where = f"{path} line {n}"
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise errors.SourceError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(entry, dict) or not isinstance(entry.get("clip_id"), str):
      raise errors.SourceError(f"{where}: expected an object with a string clip_id")
    clip = entry["clip_id"]

    def fail(what, clip=clip, where=where):
      return errors.SourceError(f"clip {clip!r} ({where}): {what}")

    unknown = sorted(set(entry) - MANIFEST_KEYS)
    if unknown:
      raise fail(f"unknown keys {unknown}; known: {sorted(MANIFEST_KEYS)}")
    if clip in seen:
      raise fail(f"clip id also on line {seen[clip]}")
    seen[clip] = n
    for key in ("pose", "pose_fps", "skeleton"):
      if key not in entry:
        raise fail(f"missing key {key!r}")
    if entry["skeleton"] not in skeletons.SKELETONS:
      raise fail(f"unknown skeleton {entry['skeleton']!r}; known: "
                 f"{', '.join(skeletons.SKELETONS)}")
    fps = entry["pose_fps"]
    if not isinstance(fps, (int, float)) or not fps > 0:
      raise fail(f"pose_fps must be a number > 0, got {fps!r}")
    pose_path = os.path.join(root, entry["pose"])
    if not os.path.isfile(pose_path):
      raise fail(f"pose file {pose_path} not found")
    video_path = rate = None
    if entry.get("video") is not None:
      video_path = os.path.join(root, entry["video"])
      rate = entry.get("video_rate_hz")
      if not isinstance(rate, (int, float)) or not rate > 0:
        raise fail(f"video_rate_hz must be a number > 0 when video is given, got {rate!r}")
      if not os.path.isfile(video_path):
        raise fail(f"video file {video_path} not found")
    language = entry.get("language")
    if language is not None and not isinstance(language, dict):
      raise fail("language must be an object")
    label = entry.get("label")
    if label is not None and not isinstance(label, str):
      raise fail(f"label must be a class name string, got {label!r}")
    specs.append(ClipSpec(clip, pose_path, float(fps), entry["skeleton"], video_path,
                          None if rate is None else float(rate),
                          clip_text(language, text_fields), label))
  if not specs:
    raise errors.SourceError(f"{path}: no clips")
  skels = collections.Counter(s.skeleton for s in specs)
  if len(skels) > 1:
    example = {k: next(s.clip_id for s in specs if s.skeleton == k) for k in skels}
    raise errors.SourceError(
        f"{path}: clips use several skeletons {dict(skels)} (e.g. {example}); a dataset has one "
        "joint layout, convert them separately")
  return specs


def _load_array(spec: ClipSpec, path: str, what: str) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise errors.clip_error(spec.clip_id, path, f"cannot read {what} as .npy: {e}") from e
  if not np.issubdtype(array.dtype, np.number):
    raise errors.clip_error(spec.clip_id, path, f"{what} is not numeric ({array.dtype})")
  return array.astype(np.float64)


def load_pose(spec: ClipSpec) -> np.ndarray:
  """The clip's pose [T >= 2, J, 3] float64 (metres, NaN = missing joint), shape-checked."""
  skel = skeletons.get_skeleton(spec.skeleton)
  pose = _load_array(spec, spec.pose_path, "pose")
  if pose.ndim != 3 or pose.shape[1:] != (skel.num_joints, 3) or len(pose) < 2:
    raise errors.clip_error(
        spec.clip_id, spec.pose_path, f"pose has shape {pose.shape}, expected [T >= 2, "
        f"{skel.num_joints}, 3] for skeleton {skel.name!r}")
  if np.isinf(pose).any():
    raise errors.clip_error(spec.clip_id, spec.pose_path, "pose has infinite values")
  return pose


def load_video(spec: ClipSpec, video_dim: int) -> np.ndarray:
  """The clip's video features [T_v >= 1, video_dim] float64, checked finite."""
  video = _load_array(spec, spec.video_path, "video features")
  if video.ndim != 2 or video.shape[1] != video_dim or not len(video):
    raise errors.clip_error(spec.clip_id, spec.video_path,
                            f"video features have shape {video.shape}, expected "
                            f"[T_v >= 1, {video_dim}]")
  if not np.isfinite(video).all():
    raise errors.clip_error(spec.clip_id, spec.video_path,
                            "video features have non-finite values")
  return video
