"""Turning a source's world frame so that +z is up, the frame the simulator and records use."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.spatial.transform import Rotation


def rotation_to_z_up(up: Sequence[float]) -> np.ndarray:
  """[3, 3] proper rotation R with R @ unit(up) = +z: the smallest one (a half turn about x
  when up points down)."""
  up = np.asarray(up, dtype=np.float64)
  norm = np.linalg.norm(up) if up.shape == (3,) else np.nan
  if not (np.isfinite(norm) and norm > 0):
    raise ValueError(f"up must be a finite non-zero 3-vector, got {up.tolist()}")
  up = up / norm
  z = np.array([0.0, 0.0, 1.0])
  cross = np.cross(up, z)
  sin, cos = np.linalg.norm(cross), float(up @ z)
  if sin < 1e-12:
    return np.eye(3) if cos > 0 else np.diag([1.0, -1.0, -1.0])
  return Rotation.from_rotvec(cross / sin * math.atan2(sin, cos)).as_matrix()


def to_z_up(positions: np.ndarray, up: Sequence[float]) -> np.ndarray:
  """positions [..., 3] in a frame whose vertical is `up` -> the same points with +z up."""
  return np.asarray(positions, dtype=np.float64) @ rotation_to_z_up(up).T
