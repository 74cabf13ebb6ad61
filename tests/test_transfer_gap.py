"""The real/simulated pairs of the transfer-gap measurement."""

import os

import numpy as np
import pytest

from conftest import SHARED_DATA
from data_prep import transfer_gap
from mujo_jax.sources import utd_mhad

UTD_MHAD = os.path.join(SHARED_DATA, "utd_mhad")


@pytest.mark.skipif(not os.path.isdir(UTD_MHAD), reason=f"UTD-MHAD not found at {UTD_MHAD}")
def test_real_and_simulated_windows_of_one_trial_agree_in_units_and_motion():
  trials = {t.name: t for t in utd_mhad.list_trials(UTD_MHAD)}
  # a1 (swipe left): wrist sensor; a22 (jogging): thigh sensor.
  for name in ("a1_s1_t1", "a22_s1_t1"):
    real, sim = transfer_gap.real_and_simulated(trials[name])
    assert real.shape == sim.shape == (transfer_gap.WINDOW, 6)
    # Both read gravity plus motion in m/s^2: the medians of |acc| agree within 20 %.
    real_g, sim_g = (np.median(np.linalg.norm(x[:, :3], axis=1)) for x in (real, sim))
    assert 8.0 < real_g < 12.0 and abs(sim_g - real_g) / real_g < 0.2
    # The same motion: |gyro| of the two correlates (orientation-free).
    r = np.corrcoef(np.linalg.norm(real[:, 3:], axis=1), np.linalg.norm(sim[:, 3:], axis=1))[0, 1]
    assert r > 0.4, (name, r)
