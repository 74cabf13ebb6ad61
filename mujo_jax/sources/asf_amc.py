"""Acclaim ASF/AMC motion capture (CMU, HDM05): parsing and forward kinematics.

ASF describes the skeleton: `:units` (mass, length, angle), `:root` (order of its AMC dofs,
axis order, rest position and orientation), `:bonedata` (per bone: id, name, direction,
length, `axis` angles + their order, dof, limits) and `:hierarchy` (parent, children...).
AMC holds frames: a frame number line, then "bone value..." lines, the values in the order of
the bone's dof (the root's in its `order`).

Forward kinematics, the standard ASF/AMC convention: per bone C = rotation from its `axis`
angles in the given order, M = rotation from its dof angles in their order, both composed as
rotations about the fixed axes in that order (the first listed is applied first, i.e.
R = R_last ... R_first; scipy's extrinsic lowercase sequences); the bone's global rotation
G = G_parent C M C^-1 and its end = parent's end + G (direction * length). The root: C from
`orientation` in `axis` order, M from its rotation dofs in `order`, position = `position` +
its translation dofs.

Units: lengths (bone lengths, root translation) are in ASF length units. An ASF that says
`length 0.45` (CMU, and HDM05, whose VICON exports write the same header) stores inches
multiplied by 0.45, so metres = value * 0.0254 / 0.45 (`metres_per_unit`): an HDM05 actor then
stands about 1.6-1.9 m tall. Angles: `angle deg` or `rad` in the ASF; an AMC's `:DEGREES` /
`:RADIANS` line overrides that for its values. AMC files carry no frame rate: HDM05 records at
120 fps (the `fps` argument).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial.transform import Rotation

from mujo_jax.sources import errors

INCH_M = 0.0254
_AXES = "xyz"


@dataclasses.dataclass
class Bone:
  name: str
  direction: np.ndarray                      # [3] unit vector in the rest pose's world axes
  length: float
  axis: np.ndarray                           # [3] angles
  axis_order: str                            # e.g. "xyz"
  dof: tuple[str, ...] = ()                  # e.g. ("rx", "rz")


@dataclasses.dataclass
class Skeleton:
  """A parsed ASF: units, root and bones (children listed in `hierarchy`)."""
  path: str
  length_unit: float                         # the :units length value (0.45: inches * 0.45)
  degrees: bool
  root_order: tuple[str, ...]
  root_axis: str
  root_position: np.ndarray
  root_orientation: np.ndarray
  bones: dict[str, Bone]
  hierarchy: dict[str, tuple[str, ...]]

  @property
  def metres_per_unit(self) -> float:
    """Metres per ASF length unit: inches * length_unit is stored (module docstring)."""
    return INCH_M / self.length_unit


@dataclasses.dataclass
class Motion:
  """A posed AMC clip. positions [T, J, 3] in ASF length units; rotations [T, J, 3, 3] the
  global rotation of each bone (the root's for "root"); joint j is the end of bone j."""
  joint_names: tuple[str, ...]
  parents: tuple[int, ...]
  fps: float
  positions: np.ndarray
  rotations: np.ndarray
  metres_per_unit: float


def _error(path: str, line: int, what: str) -> errors.SourceError:
  return errors.SourceError(f"{path}, line {line}: {what}")


def _numbers(path: str, line: int, values: list[str], count: int, what: str) -> np.ndarray:
  if len(values) != count:
    raise _error(path, line, f"{what} needs {count} numbers, got {len(values)}")
  try:
    return np.array([float(v) for v in values])
  except ValueError:
    raise _error(path, line, f"{what}: not a number in {values}") from None


def _order(path: str, line: int, text: str) -> str:
  order = text.lower()
  if len(order) != 3 or sorted(order) != list(_AXES):
    raise _error(path, line, f"axis order {text!r} is not a permutation of XYZ")
  return order


def read_asf(path: str) -> Skeleton:
  """Parses an ASF file; SourceError naming the file and line on bad input."""
  try:
    with open(path, encoding="latin-1") as f:
      lines = [(n + 1, line.split()) for n, line in enumerate(f) if line.strip()
               and not line.lstrip().startswith("#")]
  except OSError as e:
    raise errors.SourceError(f"{path}: cannot read ASF file: {e}") from e
  section, units, root, bones, hierarchy = None, {}, {}, {}, {}
  bone: dict | None = None
  for n, tokens in lines:
    key = tokens[0]
    if key.startswith(":"):
      section = key[1:]
      if section in ("version", "name", "documentation"):
        section = "skip" if section == "documentation" else None
      continue
    if section == "units":
      units[key] = tokens[1:]
    elif section == "root":
      root[key] = (n, tokens[1:])
    elif section == "bonedata":
      if key == "begin":
        bone = {"line": n}
      elif key == "end":
        if bone is None:
          raise _error(path, n, "'end' without 'begin' in :bonedata")
        for field in ("name", "direction", "length", "axis"):
          if field not in bone:
            raise _error(path, bone["line"], f"bone {bone.get('name', '?')!r} has no {field}")
        bones[bone["name"]] = Bone(bone["name"], bone["direction"], bone["length"],
                                   bone["axis"], bone["axis_order"], bone.get("dof", ()))
        bone = None
      elif bone is None:
        raise _error(path, n, f"{key!r} outside a begin/end block in :bonedata")
      elif key == "name":
        bone["name"] = tokens[1]
      elif key == "direction":
        d = _numbers(path, n, tokens[1:], 3, f"bone {bone.get('name')!r} direction")
        norm = np.linalg.norm(d)
        bone["direction"] = d / norm if norm > 0 else d
      elif key == "length":
        bone["length"] = float(_numbers(path, n, tokens[1:], 1, "length")[0])
      elif key == "axis":
        bone["axis"] = _numbers(path, n, tokens[1:4], 3, f"bone {bone.get('name')!r} axis")
        bone["axis_order"] = _order(path, n, tokens[4] if len(tokens) > 4 else "XYZ")
      elif key == "dof":
        dof = tuple(t.lower() for t in tokens[1:])
        bad = [d for d in dof if d not in ("rx", "ry", "rz", "tx", "ty", "tz", "l")]
        if bad:
          raise _error(path, n, f"bone {bone.get('name')!r}: unknown dof {bad}")
        bone["dof"] = dof
    elif section == "hierarchy":
      if key in ("begin", "end"):
        continue
      hierarchy[key] = tuple(tokens[1:])
  if not bones or not root or not hierarchy:
    raise errors.SourceError(f"{path}: an ASF needs :root, :bonedata and :hierarchy")
  length_unit = float(units.get("length", ["1"])[0])
  angle = units.get("angle", ["deg"])[0].lower()
  if angle not in ("deg", "rad"):
    raise errors.SourceError(f"{path}: :units angle must be deg or rad, got {angle!r}")
  line, order = root.get("order", (0, ["TX", "TY", "TZ", "RX", "RY", "RZ"]))
  root_order = tuple(t.lower() for t in order)
  if sorted(root_order) != sorted(set(root_order)) or any(
      d not in ("rx", "ry", "rz", "tx", "ty", "tz") for d in root_order):
    raise _error(path, line, f"root order {order} is not a list of TX..RZ")
  line, axis = root.get("axis", (0, ["XYZ"]))
  root_axis = _order(path, line, axis[0])
  line, position = root.get("position", (0, ["0", "0", "0"]))
  root_position = _numbers(path, line, position, 3, "root position")
  line, orientation = root.get("orientation", (0, ["0", "0", "0"]))
  root_orientation = _numbers(path, line, orientation, 3, "root orientation")
  names = set(bones) | {"root"}
  for parent, children in hierarchy.items():
    for name in (parent, *children):
      if name not in names:
        raise errors.SourceError(f"{path}: :hierarchy names {name!r}, which is no bone")
  return Skeleton(path, length_unit, angle == "deg", root_order, root_axis, root_position,
                  root_orientation, bones, hierarchy)


def read_amc(path: str, skeleton: Skeleton) -> tuple[dict[str, np.ndarray], bool]:
  """Parses an AMC file -> ({bone or "root": values [T, dof]}, degrees)."""
  try:
    with open(path, encoding="latin-1") as f:
      text = f.read()
  except OSError as e:
    raise errors.SourceError(f"{path}: cannot read AMC file: {e}") from e
  degrees = skeleton.degrees
  dofs = {"root": len(skeleton.root_order)}
  dofs.update({b.name: len(b.dof) for b in skeleton.bones.values() if b.dof})
  rows: dict[str, list[list[str]]] = {name: [] for name in dofs}
  frames, frame_line = 0, 0
  for n, line in enumerate(text.splitlines(), 1):
    tokens = line.split()
    if not tokens or tokens[0].startswith("#"):
      continue
    if tokens[0].startswith(":"):
      if tokens[0].upper() == ":DEGREES":
        degrees = True
      elif tokens[0].upper() == ":RADIANS":
        degrees = False
      continue
    if len(tokens) == 1 and tokens[0].isdigit():
      if frames:
        _check_frame(path, frame_line, frames, rows)
      frames, frame_line = frames + 1, n
      continue
    if not frames:
      raise _error(path, n, f"{tokens[0]!r} before the first frame number")
    if tokens[0] not in dofs:
      if tokens[0] in skeleton.bones:
        continue  # a bone without dof: nothing to read
      raise _error(path, n, f"bone {tokens[0]!r} is not in the skeleton {skeleton.path}")
    if len(tokens) - 1 != dofs[tokens[0]]:
      raise _error(path, n, f"bone {tokens[0]!r} has {len(tokens) - 1} values, its dof in "
                   f"{skeleton.path} has {dofs[tokens[0]]}")
    rows[tokens[0]].append(tokens[1:])
  if not frames:
    raise errors.SourceError(f"{path}: no frames")
  _check_frame(path, frame_line, frames, rows)
  values = {}
  for name, r in rows.items():
    try:
      values[name] = np.array(r, dtype=np.float64).reshape(frames, dofs[name])
    except ValueError:
      raise errors.SourceError(f"{path}: bone {name!r} has a value that is not a number") from None
  return values, degrees


def _check_frame(path: str, line: int, frames: int, rows: dict[str, list]) -> None:
  for name, r in rows.items():
    if len(r) != frames:
      raise _error(path, line, f"frame {frames} has {len(r) - frames + 1} lines for "
                   f"bone {name!r}, expected 1")


def _rotation(order: str, angles: np.ndarray, degrees: bool) -> np.ndarray:
  """Rotations about the fixed axes in `order` (first applied first) -> [..., 3, 3]."""
  return Rotation.from_euler(order, angles, degrees=degrees).as_matrix()


def _dof_rotation(dof: tuple[str, ...], values: np.ndarray, frames: int,
                  degrees: bool) -> np.ndarray:
  order = "".join(d[1] for d in dof if d[0] == "r")
  if not order:
    return np.broadcast_to(np.eye(3), (frames, 3, 3))
  angles = values[:, [i for i, d in enumerate(dof) if d[0] == "r"]]
  return _rotation(order, angles, degrees)


def forward_kinematics(skeleton: Skeleton, values: dict[str, np.ndarray], degrees: bool,
                       fps: float) -> Motion:
  """Posed joints (root, then bone ends in depth-first hierarchy order) (module docstring)."""
  frames = len(values["root"])
  root_values = values["root"]
  translation = skeleton.root_position + np.stack(
      [root_values[:, skeleton.root_order.index(t)] if t in skeleton.root_order
       else np.zeros(frames) for t in ("tx", "ty", "tz")], axis=1)
  c = _rotation(skeleton.root_axis, skeleton.root_orientation, skeleton.degrees)
  m = _dof_rotation(skeleton.root_order, root_values, frames, degrees)
  names, parents = ["root"], [-1]
  positions, rotations = [translation], [c @ m @ c.T]
  stack = [(child, 0) for child in reversed(skeleton.hierarchy.get("root", ()))]
  while stack:
    name, parent = stack.pop()
    if name in names:
      raise errors.SourceError(f"{skeleton.path}: bone {name!r} appears twice in :hierarchy")
    bone = skeleton.bones[name]
    c = _rotation(bone.axis_order, bone.axis, skeleton.degrees)
    m = _dof_rotation(bone.dof, values.get(name, np.zeros((frames, len(bone.dof)))), frames,
                      degrees)
    g = rotations[parent] @ c @ m @ c.T
    positions.append(positions[parent] + np.einsum("tij,j->ti", g, bone.direction * bone.length))
    rotations.append(g)
    names.append(name)
    parents.append(parent)
    index = len(names) - 1
    stack.extend((child, index) for child in reversed(skeleton.hierarchy.get(name, ())))
  return Motion(tuple(names), tuple(parents), fps, np.stack(positions, axis=1),
                np.stack(rotations, axis=1), skeleton.metres_per_unit)


def load(amc_path: str, asf_path: str, fps: float = 120.0) -> Motion:
  """Reads an ASF skeleton and an AMC clip and poses it (module docstring)."""
  skeleton = read_asf(asf_path)
  values, degrees = read_amc(amc_path, skeleton)
  return forward_kinematics(skeleton, values, degrees, fps)
