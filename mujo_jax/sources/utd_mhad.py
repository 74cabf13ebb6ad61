"""UTD-MHAD (Chen, Jafari & Kehtarnavaz, ICIP 2015): file layout, loaders, alignment.

Real paired recordings of 27 actions by 8 subjects, 4 trials each (861 of the
864 exist). Per trial `aA_sS_tT`:
  Inertial/aA_sS_tT_inertial.mat  key d_iner (T, 6): acc xyz in g, gyro xyz in
      deg/s, 50 Hz, one sensor on the right wrist (actions 1-21) or the right
      thigh (actions 22-27).
  Skeleton/aA_sS_tT_skeleton.mat  key d_skel (20, 3, T): Kinect v1 joints in
      metres, camera frame, in the order of `skeletons.KINECT_V1_20`.

The loaders return SI units and time-major arrays, so the data can go straight
into `virtual_imu.simulate_imu` and be compared with its output:
`load_inertial` -> [T, 6] (m/s^2, rad/s), `load_skeleton` -> [T, 20, 3] (m).

Timing: the two streams start and stop together, but the skeleton has far fewer
frames than 30 Hz would give. `aligned_fps` stretches the skeleton over the inertial duration;
that matches the real sensor much better than the nominal 30 Hz
(data_prep/validate_imu_sim.py measures both).

Vertical: Kinect's camera frame has y up (`UP`): the camera is held level, so the direction
from the feet midpoint to the head lies close to +y, with the head above the feet, in every
trial.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import numpy as np
import scipy.io

from mujo_jax import units

ACTIONS: tuple[str, ...] = (
    "right arm swipe to the left", "right arm swipe to the right", "right hand wave",
    "two hand front clap", "right arm throw", "cross arms in the chest", "basketball shoot",
    "right hand draw x", "right hand draw circle (clockwise)",
    "right hand draw circle (counter clockwise)", "draw triangle", "bowling (right hand)",
    "front boxing", "baseball swing from right", "tennis right hand forehand swing",
    "arm curl (two arms)", "tennis serve", "two hand push", "right hand knock on door",
    "right hand catch an object", "right hand pick up and throw", "jogging in place",
    "walking in place", "sit to stand", "stand to sit", "forward lunge (left foot forward)",
    "squat (two arms stretch out)")
assert len(ACTIONS) == 27

INERTIAL_HZ = 50.0
NOMINAL_SKELETON_FPS = 30.0
NUM_JOINTS = 20
# World up in Kinect camera coordinates (module docstring).
UP: tuple[float, float, float] = (0.0, 1.0, 0.0)
# Cross-subject protocol of CMC-CMKM (Brinzea et al. 2022) and others.
SUBJECT_SPLITS: dict[str, tuple[int, ...]] = {
    "train": (1, 3, 5), "val": (7,), "test": (2, 4, 6, 8)}
LAST_WRIST_ACTION = 21  # actions 1-21: sensor on the right wrist; 22-27: right thigh

INERTIAL_DIR, SKELETON_DIR = "Inertial", "Skeleton"
INERTIAL_KEY, SKELETON_KEY = "d_iner", "d_skel"
_NAME = re.compile(r"^a(\d+)_s(\d+)_t(\d+)_(inertial|skeleton)\.mat$")


@dataclasses.dataclass(frozen=True)
class Trial:
  """One recording: action (1-based, ACTIONS[action - 1]), subject, trial and its two files."""
  action: int
  subject: int
  trial: int
  inertial_path: str
  skeleton_path: str

  @property
  def sensor_location(self) -> str:
    """The `virtual_imu` location of the real sensor in this trial."""
    return "right_wrist" if self.action <= LAST_WRIST_ACTION else "right_thigh"

  @property
  def name(self) -> str:
    return f"a{self.action}_s{self.subject}_t{self.trial}"


def list_trials(root: str, unpaired: list[str] | None = None) -> list[Trial]:
  """Trials under root/Inertial and root/Skeleton, paired by (action, subject, trial), sorted.

  A file whose counterpart is missing is logged as a warning, appended to
  `unpaired` (when given) and skipped. .mat files not named aA_sS_tT_<kind>.mat
  are reported the same way. Raises FileNotFoundError naming a missing folder.
  """
  found: dict[str, dict[tuple[int, int, int], str]] = {}
  for folder, kind in ((INERTIAL_DIR, "inertial"), (SKELETON_DIR, "skeleton")):
    path = os.path.join(root, folder)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"UTD-MHAD folder {path!r} not found (expected {INERTIAL_DIR}/ "
                              f"and {SKELETON_DIR}/ under {root!r})")
    found[kind] = {}
    for fname in sorted(os.listdir(path)):
      if not fname.endswith(".mat"):
        continue
      match = _NAME.match(fname)
      if not match or match.group(4) != kind:
        _report(unpaired, os.path.join(path, fname), f"not named aA_sS_tT_{kind}.mat")
        continue
      key = tuple(int(g) for g in match.groups()[:3])
      if key in found[kind]:
        raise ValueError(f"two {kind} files for a{key[0]}_s{key[1]}_t{key[2]}: "
                         f"{found[kind][key]!r} and {os.path.join(path, fname)!r}")
      found[kind][key] = os.path.join(path, fname)
  inertial, skeleton = found["inertial"], found["skeleton"]
  for key in sorted(set(inertial) ^ set(skeleton)):
    have, lack = ((inertial, SKELETON_DIR) if key in inertial else (skeleton, INERTIAL_DIR))
    _report(unpaired, have[key], f"no counterpart in {lack}/")
  trials = []
  for key in sorted(set(inertial) & set(skeleton)):
    if not 1 <= key[0] <= len(ACTIONS):
      raise ValueError(f"{inertial[key]!r}: action {key[0]} outside 1..{len(ACTIONS)}")
    trials.append(Trial(*key, inertial_path=inertial[key], skeleton_path=skeleton[key]))
  return trials


def _report(unpaired: list[str] | None, path: str, why: str) -> None:
  logging.warning("UTD-MHAD: skipping %s (%s)", path, why)
  if unpaired is not None:
    unpaired.append(path)


def _load_key(path: str, key: str) -> np.ndarray:
  try:
    contents = scipy.io.loadmat(path)
  except Exception as e:  # scipy raises several types for unreadable files
    raise ValueError(f"{path!r}: cannot read as a .mat file: {e}") from e
  if key not in contents:
    keys = sorted(k for k in contents if not k.startswith("__"))
    raise ValueError(f"{path!r}: no key {key!r} (keys: {keys})")
  value = np.asarray(contents[key])
  if not np.issubdtype(value.dtype, np.number):
    raise ValueError(f"{path!r}: key {key!r} is not numeric (dtype {value.dtype})")
  value = value.astype(np.float64)
  if not np.isfinite(value).all():
    raise ValueError(f"{path!r}: key {key!r} has non-finite values")
  return value


def load_inertial(trial: Trial) -> np.ndarray:
  """[T, 6] float64: acc xyz in m/s^2 (specific force, gravity included), gyro xyz in rad/s."""
  d = _load_key(trial.inertial_path, INERTIAL_KEY)
  if d.ndim != 2 or d.shape[1] != 6 or d.shape[0] < 2:
    raise ValueError(f"{trial.inertial_path!r}: {INERTIAL_KEY!r} must have shape (T, 6) with "
                     f"T >= 2, got {d.shape}")
  return np.concatenate([units.g_to_ms2(d[:, :3]), units.deg_to_rad(d[:, 3:])], axis=1)


def load_skeleton(trial: Trial) -> np.ndarray:
  """[T, 20, 3] float64 joint positions in metres, camera frame (y up), KINECT_V1_20 order."""
  d = _load_key(trial.skeleton_path, SKELETON_KEY)
  if d.ndim != 3 or d.shape[:2] != (NUM_JOINTS, 3) or d.shape[2] < 2:
    raise ValueError(f"{trial.skeleton_path!r}: {SKELETON_KEY!r} must have shape "
                     f"({NUM_JOINTS}, 3, T) with T >= 2, got {d.shape}")
  return np.ascontiguousarray(np.transpose(d, (2, 0, 1)))


def aligned_fps(n_skeleton_frames: int, n_inertial_samples: int,
                inertial_hz: float = INERTIAL_HZ) -> float:
  """Skeleton frame rate that makes its n frames span the inertial recording's duration.

  Both streams start together and stop together, so n_skeleton frames cover
  n_inertial / inertial_hz seconds: fps = n_skeleton * inertial_hz / n_inertial.
  """
  if n_skeleton_frames < 1 or n_inertial_samples < 1:
    raise ValueError(f"need at least one frame and one sample, got {n_skeleton_frames} "
                     f"skeleton frames and {n_inertial_samples} inertial samples")
  if not inertial_hz > 0:
    raise ValueError(f"inertial_hz must be > 0, got {inertial_hz}")
  return n_skeleton_frames * inertial_hz / n_inertial_samples


def skeleton_fps(skeleton: np.ndarray, inertial: np.ndarray,
                 inertial_hz: float = INERTIAL_HZ) -> float:
  """`aligned_fps` for a loaded pair: skeleton [T_s, 20, 3], inertial [T_i, 6]."""
  return aligned_fps(len(skeleton), len(inertial), inertial_hz)
