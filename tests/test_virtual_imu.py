"""Virtual IMU physics on motions whose readings are known in closed form."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mujo_jax import units
from mujo_jax.sim import skeletons
from mujo_jax.sim import virtual_imu
from mujo_jax.sim.virtual_imu import SENSOR_LOCATIONS, simulate_imu

G = units.STANDARD_GRAVITY
H36M = skeletons.get_skeleton("h36m17")
LEFT_ELBOW, LEFT_WRIST = H36M.index("left_elbow"), H36M.index("left_wrist")
TORSO = ("chest", "pelvis", "head", "back")

# Upright h36m17 pose facing +y, right side towards +x, arms and legs hanging straight.
STANDING = np.array([
    [0.00, 0.00, 0.95], [0.13, 0.00, 0.95], [0.13, 0.00, 0.50], [0.13, 0.00, 0.08],
    [-0.13, 0.00, 0.95], [-0.13, 0.00, 0.50], [-0.13, 0.00, 0.08], [0.00, 0.00, 1.18],
    [0.00, 0.00, 1.43], [0.00, 0.08, 1.52], [0.00, 0.00, 1.68], [-0.16, 0.00, 1.42],
    [-0.16, 0.00, 1.14], [-0.16, 0.00, 0.89], [0.16, 0.00, 1.42], [0.16, 0.00, 1.14],
    [0.16, 0.00, 0.89]])
FOREARM = np.linalg.norm(STANDING[LEFT_WRIST] - STANDING[LEFT_ELBOW])


def still(n: int) -> np.ndarray:
  return np.repeat(STANDING[None], n, axis=0)


def spinning_forearm(omega: float, fps: float, seconds: float):
  """Left forearm swinging outwards about the elbow in the frontal (x-z) plane,
  starting from hanging; returns (positions [T, 17, 3], unit directions [T, 3])."""
  t = np.arange(round(seconds * fps)) / fps
  direction = np.stack([-np.sin(omega * t), np.zeros_like(t), -np.cos(omega * t)], axis=-1)
  pos = still(len(t))
  pos[:, LEFT_WRIST] = STANDING[LEFT_ELBOW] + FOREARM * direction
  return pos, direction


def loc(name: str) -> int:
  return SENSOR_LOCATIONS.index(name)


def test_static_pose_reads_gravity_in_any_orientation():
  rot = Rotation.random(rng=np.random.default_rng(0))
  pos = still(60) @ rot.as_matrix().T + [1.0, -2.0, 0.5]
  out = simulate_imu(pos, fps=30, up=rot.apply([0.0, 0.0, 1.0]))
  assert out.shape == (len(SENSOR_LOCATIONS), 99, 6) and out.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(out[..., :3], axis=-1), G, rtol=1e-3)
  np.testing.assert_allclose(out[..., 3:], 0.0, atol=1e-4)
  # Upright: torso sensors feel +g along z (up); limb x axes point down the hanging segments.
  torso = [loc(n) for n in TORSO]
  np.testing.assert_allclose(out[torso, :, :3] - [0, 0, G], 0.0, atol=1e-3)
  limbs = [i for i in range(len(SENSOR_LOCATIONS)) if i not in torso]
  np.testing.assert_allclose(out[limbs, :, 0], -G, atol=1e-3)


@pytest.mark.parametrize("location, radius", [("left_forearm", 0.5), ("left_wrist", 0.9)])
def test_spinning_forearm_gyro_and_centripetal_force(location, radius):
  omega = 2.0
  pos, _ = spinning_forearm(omega, fps=100, seconds=4)
  out = simulate_imu(pos, fps=100, rate_hz=50)
  inner = slice(10, -10)
  t = np.arange(out.shape[1])[inner] / 50
  # The frame turns about the body's forward axis, its z axis at rest; no twist about the segment.
  gyr = out[loc(location), inner, 3:]
  np.testing.assert_allclose(gyr[:, 2], omega, rtol=0.005)
  np.testing.assert_allclose(gyr[:, :2], 0.0, atol=0.01)
  # Specific force: centripetal -w^2 r along the segment plus gravity (+G up).
  r = radius * FOREARM
  force = -omega**2 * r * np.stack([-np.sin(omega * t), 0 * t, -np.cos(omega * t)], -1) + [0, 0, G]
  acc = out[loc(location), inner, :3]
  np.testing.assert_allclose(np.linalg.norm(acc, axis=-1), np.linalg.norm(force, axis=-1),
                             rtol=0.002)
  np.testing.assert_allclose(acc[:, 0], -omega**2 * r - G * np.cos(omega * t), atol=0.02)
  still_sensors = [loc(n) for n in SENSOR_LOCATIONS if n not in ("left_forearm", "left_wrist")]
  np.testing.assert_allclose(out[still_sensors, :, 3:], 0.0, atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(out[still_sensors, :, :3], axis=-1), G, rtol=1e-3)


def test_placement_moves_the_sensor_along_its_segment():
  omega, fraction = 2.0, 0.25
  pos, _ = spinning_forearm(omega, fps=100, seconds=4)
  default = simulate_imu(pos, fps=100, locations=("left_forearm",))
  moved = simulate_imu(pos, fps=100, locations=("left_forearm",),
                       placement={"left_forearm": fraction})
  inner = slice(10, -10)
  t = np.arange(moved.shape[1])[inner] / 50
  np.testing.assert_allclose(moved[0, inner, 0],
                             -omega**2 * fraction * FOREARM - G * np.cos(omega * t), atol=0.02)
  # Same segment, same frame: the gyroscope does not move with the sensor.
  np.testing.assert_array_equal(moved[..., 3:], default[..., 3:])
  assert not np.allclose(moved[..., :3], default[..., :3], atol=0.05)
  # The default placement is what simulate_imu uses when none is given.
  base = virtual_imu.default_placement(("left_forearm",))
  np.testing.assert_array_equal(simulate_imu(pos, fps=100, locations=("left_forearm",),
                                             placement=base), default)
  assert base["left_forearm"] != fraction
  assert set(virtual_imu.default_placement()) == set(virtual_imu.SENSOR_LOCATIONS)
  with pytest.raises(ValueError, match=r"unknown sensor locations \['left_ear'\]"):
    virtual_imu.default_placement(("left_ear",))


@pytest.mark.parametrize("placement, pattern", [
    ({"left_wrist": 0.5}, "not among the requested locations"),
    ({"left_forearm": 1.5}, r"placement\['left_forearm'\] must be a fraction in \[0, 1\]"),
])
def test_bad_placement_names_the_location(placement, pattern):
  with pytest.raises(ValueError, match=pattern):
    simulate_imu(still(60), fps=30, locations=("left_forearm",), placement=placement)


def test_constant_acceleration_reads_a_minus_g():
  a = np.array([1.5, -0.5, 2.0])
  t = np.arange(90) / 30
  pos = still(len(t)) + (np.outer(t, [0.3, 0.0, -0.2]) + 0.5 * np.outer(t**2, a))[:, None, :]
  out = simulate_imu(pos, fps=30, rate_hz=50)
  np.testing.assert_allclose(np.linalg.norm(out[..., :3], axis=-1), np.linalg.norm(a + [0, 0, G]),
                             rtol=1e-4)
  np.testing.assert_allclose(out[..., 3:], 0.0, atol=1e-4)
  # The upright chest frame is the world frame; back is turned 180 degrees about up.
  np.testing.assert_allclose(out[loc("chest"), :, :3] - (a + [0, 0, G]), 0.0, atol=1e-3)
  np.testing.assert_allclose(out[loc("back"), :, :3] - [-a[0], -a[1], a[2] + G], 0.0, atol=1e-3)


def test_readings_do_not_depend_on_world_orientation():
  pos, _ = spinning_forearm(3.0, fps=50, seconds=3)
  pos = pos + np.outer(np.arange(len(pos)) / 50, [0.4, 0.1, 0.0])[:, None, :]
  rot = Rotation.random(rng=np.random.default_rng(1))
  reference = simulate_imu(pos, fps=50)
  rotated = simulate_imu(pos @ rot.as_matrix().T, fps=50, up=rot.apply([0.0, 0.0, 1.0]))
  np.testing.assert_allclose(rotated, reference, atol=2e-4)


@pytest.mark.parametrize("frames, fps, rate_hz, expected", [
    (100, 50, 50, 100), (100, 30, 50, 166), (301, 100, 50, 151), (64, 25, 60, 152)])
def test_output_length_formula(frames, fps, rate_hz, expected):
  assert virtual_imu.num_samples(frames, fps, rate_hz) == expected
  assert expected == np.floor((frames - 1) * rate_hz / fps) + 1
  out = simulate_imu(still(frames), fps=fps, rate_hz=rate_hz, locations=("pelvis", "left_shin"))
  assert out.shape == (2, expected, 6) and out.dtype == np.float32


def test_locations_keep_requested_order():
  pos, _ = spinning_forearm(2.0, fps=50, seconds=2)
  full = simulate_imu(pos, fps=50)
  part = simulate_imu(pos, fps=50, locations=("left_wrist", "chest", "left_wrist"))
  np.testing.assert_allclose(part, full[[loc("left_wrist"), loc("chest"), loc("left_wrist")]],
                             atol=1e-5)


def test_kinect_skeleton_with_foot_joints():
  kinect = skeletons.get_skeleton("kinect_v1_20")
  own = {"hip_center": "pelvis", "shoulder_center": "thorax"}
  pose = np.zeros((kinect.num_joints, 3))
  for j, name in enumerate(kinect.joint_names):
    if name.endswith("_hand"):
      pose[j] = STANDING[H36M.index(name.replace("hand", "wrist"))] - [0, 0, 0.08]
    elif name.endswith("_foot"):
      pose[j] = STANDING[H36M.index(name.replace("foot", "ankle"))] + [0, 0.12, -0.06]
    else:
      pose[j] = STANDING[H36M.index(own.get(name, name))]
  out = simulate_imu(np.repeat(pose[None], 50, axis=0), fps=25, skeleton="kinect_v1_20")
  np.testing.assert_allclose(np.linalg.norm(out[..., :3], axis=-1), G, rtol=1e-3)
  np.testing.assert_allclose(out[..., 3:], 0.0, atol=1e-4)
  # The foot sensor lies along the foot (forward and down), not along the shin.
  foot = np.array([0, 0.12, -0.06]) / np.linalg.norm([0, 0.12, -0.06])
  np.testing.assert_allclose(out[loc("left_foot"), :, 0], G * foot[2], atol=1e-3)


def test_short_gaps_are_bridged():
  pos, _ = spinning_forearm(2.0, fps=100, seconds=3)
  clean = simulate_imu(pos, fps=100)
  gappy = pos.copy()
  gappy[100:110, LEFT_WRIST] = np.nan   # 0.1 s inside
  gappy[:5, LEFT_WRIST, 2] = np.nan     # at the start, one coordinate
  gappy[:, H36M.index("head")] = np.nan  # unused by the requested sensors
  sensors = ("left_wrist", "chest")
  out = simulate_imu(gappy, fps=100, locations=sensors)
  assert np.isfinite(out).all()
  np.testing.assert_allclose(out[:, 10:], clean[[loc(s) for s in sensors], 10:], atol=0.05)


def test_long_gap_names_the_joint():
  pos = still(100)
  pos[20:60, LEFT_WRIST] = np.nan  # 0.8 s at 50 fps
  with pytest.raises(ValueError, match="left_wrist.*h36m17"):
    simulate_imu(pos, fps=50)
  pos = still(100)
  pos[:, H36M.index("head")] = np.inf
  with pytest.raises(ValueError, match="'head'.*every frame"):
    simulate_imu(pos, fps=50)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(positions=np.zeros((50, 16, 3))), r"h36m17.*17 joints.*\(50, 16, 3\)"),
    (dict(skeleton="coco17"), "unknown skeleton 'coco17'; known: h36m17, kinect_v1_20"),
    (dict(locations=("left_wrist", "left_ear")),
     "unknown sensor location 'left_ear'; known: left_wrist"),
    (dict(locations="pelvis"), "sequence of names"),
    (dict(positions=still(8)), "smoothing window"),
    (dict(fps=0.0), "fps"),
    (dict(up=(0, 0, 0)), "up"),
    (dict(noise=virtual_imu.ImuNoise(acc_std=0.1)), "rng"),
])
def test_bad_input_raises(kwargs, pattern):
  args = dict(positions=still(50), fps=50.0) | kwargs
  with pytest.raises(ValueError, match=pattern):
    simulate_imu(**args)


def test_noise_is_seeded_and_sized():
  noise = virtual_imu.ImuNoise(acc_std=0.2, acc_bias_std=0.5, gyr_std=0.01)
  a = simulate_imu(still(400), fps=50, noise=noise, rng=np.random.default_rng(3))
  b = simulate_imu(still(400), fps=50, noise=noise, rng=np.random.default_rng(3))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a[..., :3].std(axis=1), 0.2, rtol=0.25)
  np.testing.assert_allclose(a[..., 3:].std(axis=1), 0.01, rtol=0.25)
  clean = simulate_imu(still(400), fps=50)
  assert np.abs(a[..., :3].mean(axis=1) - clean[..., :3].mean(axis=1)).max() > 0.1  # biased
  with pytest.raises(ValueError, match="acc_std"):
    virtual_imu.ImuNoise(acc_std=-1.0)


def test_limb_frame_is_the_rest_frame_where_the_limb_hangs():
  """The left forearm swings from sideways to forward (about up), then down
  (about the body's right-left axis) and hangs. Whichever way it got there,
  at rest its frame is x down, y to the body's left, z forward, so the final
  swing down turns about +y."""
  omega, fps = 2.0, 100
  quarter = np.arange(round(np.pi / 2 / omega * fps)) / fps * omega
  sweep = np.stack([-np.cos(quarter), np.sin(quarter), 0 * quarter], -1)
  drop = np.stack([0 * quarter, np.cos(quarter), -np.sin(quarter)], -1)
  direction = np.concatenate([np.repeat([[-1.0, 0, 0]], 50, 0), sweep, drop,
                              np.repeat([[0, 0, -1.0]], 50, 0)])
  pos = still(len(direction))
  pos[:, LEFT_WRIST] = STANDING[LEFT_ELBOW] + FOREARM * direction
  gyr = simulate_imu(pos, fps=fps, rate_hz=fps, locations=("left_forearm",))[0, :, 3:]
  falling = slice(50 + len(quarter) + 20, 50 + 2 * len(quarter) - 20)
  np.testing.assert_allclose(gyr[falling], np.broadcast_to([0, omega, 0], gyr[falling].shape),
                             atol=0.05)


def test_skeleton_joint_lookup():
  kinect = skeletons.get_skeleton("kinect_v1_20")
  assert kinect.index("pelvis") == kinect.joint_names.index("hip_center")
  assert kinect.has("left_foot") and not H36M.has("left_foot")
  assert H36M.index("left_wrist") == 13 and len(H36M.bones) == 16 and len(kinect.bones) == 19
  with pytest.raises(ValueError, match="skeleton 'h36m17' has no joint 'nose'; known: pelvis"):
    H36M.index("nose")
