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


@pytest.mark.skipif(not os.path.isdir(UTD_MHAD), reason=f"UTD-MHAD not found at {UTD_MHAD}")
def test_simulator_frame_brings_real_axes_onto_the_simulated_ones():
  from mujo_jax.downstream import utd_mhad as adapter
  trials = [t for t in utd_mhad.list_trials(UTD_MHAD) if t.subject == 2 and t.trial == 1]
  for location in ("right_wrist", "right_thigh"):
    pairs = [transfer_gap.real_and_simulated(t) for t in trials if t.sensor_location == location]
    real = np.concatenate([p[0] for p in pairs])
    sim = np.concatenate([p[1] for p in pairs])
    turned = adapter.to_simulator_frame(real, location)
    np.testing.assert_allclose(np.linalg.norm(turned[:, :3], axis=1),
                               np.linalg.norm(real[:, :3], axis=1), rtol=1e-5)
    # Squared acc difference from the simulated readings of a held-out subject (the rotation
    # was fitted on subjects 1, 3, 5): at least halved once turned.
    err = lambda x: np.mean((x[:, :3] - sim[:, :3]) ** 2)
    assert err(turned) < 0.5 * err(real), (location, err(turned), err(real))
  recs = adapter.load(UTD_MHAD, subjects=(1, 2), sensor_frame="simulator")
  assert any("simulator's sensor frame" in n for n in recs.notes)
  with pytest.raises(ValueError, match="sensor_frame='imu'"):
    adapter.load(UTD_MHAD, sensor_frame="imu")
