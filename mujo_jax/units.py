"""Physical constants and unit conversions shared by the simulator and the dataset readers."""

import numpy as np

# m/s^2 per g: the standard gravity that accelerometers in g are scaled by, and
# the gravity the simulator adds (a sensor at rest reads +STANDARD_GRAVITY up).
STANDARD_GRAVITY = 9.80665


def g_to_ms2(acc: np.ndarray) -> np.ndarray:
  """Acceleration in g -> m/s^2."""
  return np.asarray(acc) * STANDARD_GRAVITY


def deg_to_rad(gyr: np.ndarray) -> np.ndarray:
  """Angular rate in deg/s -> rad/s."""
  return np.deg2rad(gyr)
