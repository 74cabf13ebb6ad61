"""Synthetic stand-ins for HERO video features, derived from the motion itself.

FiMAD's real video features are HERO-style per-step CLIP (512-d, appearance) and
S3D (1024-d, motion) embeddings of YouTube frames; they are not public. The demo
dataset needs a video modality that is informative the way real features are —
about what the body does, not about the label — so we render the skeleton's
motion through a fixed random network:
  appearance (512): mean root-relative posture of each step, seen from the camera
  motion (1024):    mean joint speeds and posture change over the step
plus a per-clip "scene" vector (background, clothing, camera) and per-step noise.
These are NOT real video features; a model pretrained on them learns nothing
about real video.
"""

from __future__ import annotations

import functools

import numpy as np

APPEARANCE_DIM = 512
MOTION_DIM = 1024
_NETWORK_SEED = 20250317


@functools.lru_cache(maxsize=None)
def _random_network(in_dim: int, out_dim: int, hidden: int, salt: int):
  rng = np.random.default_rng(_NETWORK_SEED + salt)
  w1 = rng.normal(0, 1 / np.sqrt(in_dim), (in_dim, hidden)).astype(np.float32)
  w2 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, out_dim)).astype(np.float32)
  return w1, w2


def video_features(pose: np.ndarray, steps: int, rng: np.random.Generator,
                   scene_strength: float = 0.5, noise: float = 0.1) -> np.ndarray:
  """Root-relative pose [T, J, 3] of one window (camera-facing frame) -> [steps, 1536].

  The window is cut into `steps` equal segments; each gives one feature row,
  L2-normalised per part (CLIP and S3D features are usually used normalised).
  """
  t, j, _ = pose.shape
  if t < 2 * steps:
    raise ValueError(f"window of {t} frames is too short for {steps} video steps")
  segments = pose[: t - t % steps].reshape(steps, -1, j, 3)
  posture = segments.mean(axis=1).reshape(steps, -1)
  speed = np.abs(np.diff(segments, axis=1)).mean(axis=1).reshape(steps, -1) * 10.0
  change = (segments[:, -1] - segments[:, 0]).reshape(steps, -1)
  w1a, w2a = _random_network(j * 3, APPEARANCE_DIM, 256, salt=j)
  w1m, w2m = _random_network(2 * j * 3, MOTION_DIM, 256, salt=1000 + j)
  appearance = np.tanh(posture @ w1a * 3.0) @ w2a
  motion = np.tanh(np.concatenate([speed, change], axis=1) @ w1m * 3.0) @ w2m
  feats = np.concatenate([appearance, motion], axis=1)
  scene = rng.normal(size=(1, feats.shape[1]))
  feats = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-6)
  feats = feats + scene_strength * scene / np.sqrt(feats.shape[1])
  feats = feats + noise * rng.normal(size=feats.shape) / np.sqrt(feats.shape[1])
  a, m = feats[:, :APPEARANCE_DIM], feats[:, APPEARANCE_DIM:]
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  m = m / np.linalg.norm(m, axis=1, keepdims=True)
  return np.concatenate([a, m], axis=1).astype(np.float32)
