"""BVH motion capture: parsing and forward kinematics.

A BVH file has a HIERARCHY (ROOT / JOINT / End Site blocks, each with an OFFSET from its
parent, and CHANNELS for the joints) and a MOTION section (Frames, Frame Time, then one line
of channel values per frame, joints in the order of the hierarchy).

Forward kinematics: a joint's local translation is its OFFSET, with any position channel
(Xposition, Yposition, Zposition; not only the root's) replacing that component of it; its
local rotation is the product of its rotation channels as intrinsic rotations in the listed
order (degrees). Its world rotation is parent world rotation @ local rotation, and its world
position is parent position + parent world rotation @ local translation. End Sites become
joints named "{parent}_End" without channels. Positions stay in the file's units and axes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial.transform import Rotation

from mujo_jax.sources import errors

_POSITION = {"Xposition": 0, "Yposition": 1, "Zposition": 2}
_ROTATION = {"Xrotation": "X", "Yrotation": "Y", "Zrotation": "Z"}


@dataclasses.dataclass
class Joint:
  name: str
  parent: int
  offset: np.ndarray                       # [3]
  channels: tuple[str, ...] = ()
  first_channel: int = 0                   # column of its first channel in a MOTION line


@dataclasses.dataclass
class Motion:
  """A parsed and posed BVH clip.

  positions [T, J, 3] world positions in file units; rotations [T, J, 3, 3] world rotations
  (columns: the joint's local axes in world coordinates).
  """
  joint_names: tuple[str, ...]
  parents: tuple[int, ...]
  fps: float
  positions: np.ndarray
  rotations: np.ndarray


class _Lines:
  """Tokenised non-empty lines with their 1-based line numbers, for error messages."""

  def __init__(self, path: str, text: str):
    self.path = path
    self.items = [(n + 1, line.split()) for n, line in enumerate(text.splitlines())
                  if line.strip()]
    self.pos = 0

  def error(self, what: str, line: int | None = None) -> errors.SourceError:
    if line is None:
      line = self.items[min(self.pos, len(self.items) - 1)][0] if self.items else 0
    return errors.SourceError(f"{self.path}, line {line}: {what}")

  def next(self, what: str) -> tuple[int, list[str]]:
    if self.pos >= len(self.items):
      raise self.error(f"unexpected end of file, expected {what}")
    item = self.items[self.pos]
    self.pos += 1
    return item


def _floats(lines: _Lines, line: int, values: list[str], count: int, what: str) -> np.ndarray:
  if len(values) != count:
    raise lines.error(f"{what} needs {count} numbers, got {len(values)}", line)
  try:
    return np.array([float(v) for v in values])
  except ValueError:
    raise lines.error(f"{what}: not a number in {values}", line) from None


def _parse_hierarchy(lines: _Lines) -> list[Joint]:
  line, tokens = lines.next("HIERARCHY")
  if tokens != ["HIERARCHY"]:
    raise lines.error(f"expected HIERARCHY, got {' '.join(tokens)!r}", line)
  joints: list[Joint] = []
  stack: list[int] = []       # open blocks: joint index, -1 for an End Site
  num_channels = 0
  while True:
    line, tokens = lines.next("ROOT, JOINT, End Site or MOTION")
    key = tokens[0]
    if key in ("ROOT", "JOINT") or (key == "End" and tokens[1:2] == ["Site"]):
      if key == "ROOT" and (stack or joints):
        raise lines.error("a second ROOT (only one skeleton per file is supported)", line)
      if key != "ROOT" and not stack:
        raise lines.error(f"{key} outside a ROOT block", line)
      parent = stack[-1] if stack else -1
      if parent == -1 and stack:
        raise lines.error("a joint inside an End Site", line)
      if key == "End":
        name = f"{joints[parent].name}_End"
      elif len(tokens) != 2:
        raise lines.error(f"{key} needs one name, got {' '.join(tokens[1:])!r}", line)
      else:
        name = tokens[1]
      if any(j.name == name for j in joints):
        raise lines.error(f"duplicate joint name {name!r}", line)
      brace_line, brace = lines.next("{")
      if brace != ["{"]:
        raise lines.error(f"expected '{{' after {key} {name}", brace_line)
      off_line, off = lines.next("OFFSET")
      if off[0] != "OFFSET":
        raise lines.error(f"joint {name!r}: expected OFFSET, got {off[0]!r}", off_line)
      joint = Joint(name, parent, _floats(lines, off_line, off[1:], 3, f"joint {name!r} OFFSET"))
      if key != "End":
        ch_line, ch = lines.next("CHANNELS")
        if ch[0] != "CHANNELS" or len(ch) < 2:
          raise lines.error(f"joint {name!r}: expected CHANNELS, got {' '.join(ch)!r}", ch_line)
        try:
          count = int(ch[1])
        except ValueError:
          raise lines.error(f"joint {name!r}: CHANNELS count {ch[1]!r} is not a number",
                            ch_line) from None
        names = tuple(ch[2:])
        if len(names) != count:
          raise lines.error(f"joint {name!r}: CHANNELS says {count} but lists {len(names)}",
                            ch_line)
        bad = [c for c in names if c not in _POSITION and c not in _ROTATION]
        if bad or len(set(names)) != len(names):
          raise lines.error(f"joint {name!r}: unknown or repeated channels {list(names)}", ch_line)
        joint.channels, joint.first_channel = names, num_channels
        num_channels += count
      joints.append(joint)
      stack.append(-1 if key == "End" else len(joints) - 1)
    elif key == "}":
      if not stack:
        raise lines.error("unmatched '}'", line)
      stack.pop()
    elif key == "MOTION":
      if stack:
        raise lines.error("MOTION before the hierarchy's blocks are closed", line)
      if not joints:
        raise lines.error("no ROOT before MOTION", line)
      return joints
    else:
      raise lines.error(f"unexpected {key!r} in HIERARCHY", line)


def _parse_motion(lines: _Lines, num_channels: int) -> tuple[np.ndarray, float]:
  line, tokens = lines.next("Frames:")
  if tokens[:1] != ["Frames:"] or len(tokens) != 2 or not tokens[1].isdigit():
    raise lines.error(f"expected 'Frames: N', got {' '.join(tokens)!r}", line)
  frames, frames_line = int(tokens[1]), line
  line, tokens = lines.next("Frame Time:")
  if tokens[:2] != ["Frame", "Time:"] or len(tokens) != 3:
    raise lines.error(f"expected 'Frame Time: seconds', got {' '.join(tokens)!r}", line)
  try:
    dt = float(tokens[2])
  except ValueError:
    raise lines.error(f"Frame Time {tokens[2]!r} is not a number", line) from None
  if not (np.isfinite(dt) and dt > 0):
    raise lines.error(f"Frame Time must be > 0, got {dt}", line)
  rows = lines.items[lines.pos:]
  if len(rows) != frames:
    raise lines.error(f"Frames says {frames} but {len(rows)} frame lines follow", frames_line)
  for n, values in rows:
    if len(values) != num_channels:
      raise lines.error(f"frame has {len(values)} values, the hierarchy has {num_channels} "
                        "channels", n)
  try:
    data = np.array([v for _, values in rows for v in values], dtype=np.float64)
  except ValueError:
    for n, values in rows:
      try:
        [float(v) for v in values]
      except ValueError:
        raise lines.error("frame has a value that is not a number", n) from None
    raise
  data = data.reshape(frames, num_channels)
  if not np.isfinite(data).all():
    n = rows[int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])][0]
    raise lines.error("frame has a non-finite value", n)
  return data, 1.0 / dt


def forward_kinematics(joints: list[Joint], data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Channel values [T, C] -> world positions [T, J, 3] and rotations [T, J, 3, 3]."""
  frames = data.shape[0]
  positions = np.zeros((frames, len(joints), 3))
  rotations = np.zeros((frames, len(joints), 3, 3))
  for j, joint in enumerate(joints):
    local_t = np.broadcast_to(joint.offset, (frames, 3)).copy()
    order, angles = "", []
    for k, channel in enumerate(joint.channels):
      column = data[:, joint.first_channel + k]
      if channel in _POSITION:
        local_t[:, _POSITION[channel]] = column
      else:
        order += _ROTATION[channel]
        angles.append(column)
    local_r = (Rotation.from_euler(order, np.stack(angles, axis=1), degrees=True).as_matrix()
               if order else np.broadcast_to(np.eye(3), (frames, 3, 3)))
    if joint.parent < 0:
      positions[:, j], rotations[:, j] = local_t, local_r
    else:
      parent_r = rotations[:, joint.parent]
      positions[:, j] = positions[:, joint.parent] + np.einsum("tij,tj->ti", parent_r, local_t)
      rotations[:, j] = parent_r @ local_r
  return positions, rotations


def load(path: str) -> Motion:
  """Reads and poses a BVH file (module docstring); SourceError naming the file and line."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
  except OSError as e:
    raise errors.SourceError(f"{path}: cannot read BVH file: {e}") from e
  return parse(text, path)


def parse(text: str, path: str = "<bvh>") -> Motion:
  """BVH text -> Motion; `path` only names the source in error messages."""
  lines = _Lines(path, text)
  joints = _parse_hierarchy(lines)
  num_channels = sum(len(j.channels) for j in joints)
  data, fps = _parse_motion(lines, num_channels)
  positions, rotations = forward_kinematics(joints, data)
  return Motion(joint_names=tuple(j.name for j in joints),
                parents=tuple(j.parent for j in joints), fps=fps, positions=positions,
                rotations=rotations)
