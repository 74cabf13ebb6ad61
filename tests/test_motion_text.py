"""Captions from movement: synthetic h36m17 motions with a known answer, in any facing."""

import numpy as np
import pytest

from data_prep import motion_text
from mujo_jax.sim import skeletons

RATE = 50.0
T = 250
NAMES = skeletons.get_skeleton("h36m17").joint_names
J = {n: i for i, n in enumerate(NAMES)}
# A person standing at the origin, facing +y, right hand side +x, z up (metres).
STANDING = {
    "pelvis": (0, 0, 0.95), "right_hip": (0.1, 0, 0.95), "right_knee": (0.1, 0, 0.52),
    "right_ankle": (0.1, 0, 0.08), "left_hip": (-0.1, 0, 0.95), "left_knee": (-0.1, 0, 0.52),
    "left_ankle": (-0.1, 0, 0.08), "spine": (0, 0, 1.15), "thorax": (0, 0, 1.4),
    "neck": (0, 0, 1.5), "head": (0, 0, 1.65), "left_shoulder": (-0.18, 0, 1.4),
    "left_elbow": (-0.2, 0, 1.12), "left_wrist": (-0.2, 0, 0.86),
    "right_shoulder": (0.18, 0, 1.4), "right_elbow": (0.2, 0, 1.12),
    "right_wrist": (0.2, 0, 0.86),
}
t = np.arange(T) / RATE


def standing() -> np.ndarray:
  return np.tile(np.array([STANDING[n] for n in NAMES], float), (T, 1, 1))


def turned(p: np.ndarray, degrees: float, shift=(3.0, -2.0, 0.0)) -> np.ndarray:
  """The same motion facing elsewhere, somewhere else in the room."""
  a = np.radians(degrees)
  r = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  return p @ r.T + np.array(shift)


def circle(sign: int) -> np.ndarray:
  """The right wrist draws two circles in front of the body; sign +1 counterclockwise as the
  subject sees it (right, up plane)."""
  p = standing()
  theta = sign * 2 * np.pi * 2 * t / t[-1]
  p[:, J["right_wrist"]] = np.stack([0.3 + 0.25 * np.cos(theta), np.full(T, 0.35),
                                     1.2 + 0.25 * np.sin(theta)], -1)
  p[:, J["right_elbow"]] = (p[:, J["right_wrist"]] + p[:, J["right_shoulder"]]) / 2
  return p


def swipe_left() -> np.ndarray:
  """The right hand sweeps fast from the right side across to the left, then drifts back."""
  p = standing()
  x = np.interp(t, [0, 1.5, 1.9, 5], [0.45, 0.45, -0.25, 0.45])
  p[:, J["right_wrist"]] = np.stack([x, np.full(T, 0.35), np.full(T, 1.2)], -1)
  return p


def raise_swipe_lower() -> np.ndarray:
  """Resting, the right hand comes up from the side, swipes to the left up there, drops back
  and rests."""
  p = standing()
  x = np.interp(t, [0.8, 1.8, 2.6, 3.0, 3.6, 4.4], [0.2, 0.45, 0.45, -0.25, -0.25, 0.2])
  y = np.interp(t, [0.8, 1.8, 3.6, 4.4], [0, 0.35, 0.35, 0])
  z = np.interp(t, [0.8, 1.8, 3.6, 4.4], [0.86, 1.25, 1.25, 0.86])
  p[:, J["right_wrist"]] = np.stack([x, y, z], -1)
  return p


def squat() -> np.ndarray:
  """Down by 0.4 m and up again, feet flat, thigh and shin keeping their lengths."""
  p = standing()
  drop = 0.4 * np.sin(np.pi * t / t[-1]) ** 2
  for name in NAMES:
    if "ankle" not in name and "knee" not in name:
      p[:, J[name], 2] -= drop
  for side in ("left", "right"):
    hip, ankle = p[:, J[f"{side}_hip"]], p[:, J[f"{side}_ankle"]]
    half = (hip[:, 2] - ankle[:, 2]) / 2
    p[:, J[f"{side}_knee"], 1] = np.sqrt(np.maximum(0.435 ** 2 - half ** 2, 0))
    p[:, J[f"{side}_knee"], 2] = ankle[:, 2] + half
  return p


def walk(speed: float = 1.2) -> np.ndarray:
  """Walking forward (+y): the body moves on, each foot lifts once a second in turn."""
  p = standing()
  p[..., 1] += speed * t[:, None]
  for k, side in enumerate(("left", "right")):
    p[:, J[f"{side}_ankle"], 2] += 0.12 * np.clip(np.sin(2 * np.pi * t + np.pi * k), 0, None)
  return p


def clap() -> np.ndarray:
  p = standing()
  gap = 0.05 + 0.25 * (1 + np.cos(2 * np.pi * 1.2 * t)) / 2
  for side, sign in (("right", 1), ("left", -1)):
    p[:, J[f"{side}_wrist"]] = np.stack([sign * gap / 2, np.full(T, 0.35), np.full(T, 1.25)],
                                        -1)
  return p


def captions(p: np.ndarray, seeds=range(6)) -> list[str]:
  return [motion_text.describe(p, RATE, seed=s) for s in seeds]


def test_standing_still_says_so():
  assert all("still" in c or "without moving" in c for c in captions(standing()))


@pytest.mark.parametrize("sign, word", [(1, "counterclockwise"), (-1, "clockwise")])
def test_circles_and_their_direction_in_any_facing(sign, word):
  for facing in (0, 90, -135):
    m = motion_text.measure(turned(circle(sign), facing), RATE)
    assert m.hands[0].side == "right" and round(m.hands[0].circles) == 2 * sign
    for c in captions(turned(circle(sign), facing)):
      assert "circl" in c and "right" in c
      assert (word + " " in c or c.endswith(word)) and (sign > 0) == ("counterclockwise" in c)


def test_swipe_names_the_hand_and_its_direction():
  m = motion_text.measure(swipe_left(), RATE)
  assert (m.hands[0].side, m.hands[0].axis, m.hands[0].stroke) == ("right", "right", -1)
  for c in captions(turned(swipe_left(), 70)):
    assert "right" in c and ("left" in c.split("right", 1)[1])
  # The mirror image: the left hand sweeping to the right.
  mirrored = swipe_left() * np.array([-1, 1, 1])
  mirrored = mirrored[:, [NAMES.index(n.replace("left", "L").replace("right", "left")
                                      .replace("L", "right")) for n in NAMES]]
  for c in captions(mirrored):
    assert "the left" in c and "to the right" in c or "rightwards" in c


def test_a_gesture_is_read_while_the_hand_is_up():
  m = motion_text.measure(raise_swipe_lower(), RATE)
  assert m.hands[0].raised and (m.hands[0].axis, m.hands[0].stroke) == ("right", -1)
  for c in captions(raise_swipe_lower()):
    assert "to the left" in c or "leftwards" in c
  assert not motion_text.measure(swipe_left(), RATE).hands[0].raised


def test_squat_and_walk():
  m = motion_text.measure(squat(), RATE)
  assert m.squats == 1 and m.pelvis_low < 0.65 and abs(m.pelvis_start - 1.0) < 0.1
  assert all("squat" in c or "bends the knees" in c for c in captions(squat()))
  for facing in (0, 150):
    m = motion_text.measure(turned(walk(), facing), RATE)
    assert m.heading == "forward" and abs(m.speed - 1.2) < 0.05 and abs(m.turn_deg) < 1
    assert all(("walks forward" in c or "steps forward" in c) for c in
               captions(turned(walk(), facing)))
  assert all("backward" in c for c in captions(walk(-1.2)))
  assert all(("runs" in c or "jogs" in c) for c in captions(walk(3.0)))


def test_clap():
  assert motion_text.measure(clap(), RATE).hands_meet >= 5
  assert all("clap" in c or "together" in c for c in captions(clap()))
  # Alternating punches from a guard bring the hands close again and again, but not towards
  # each other (both sway sideways together): no clap.
  p = standing()
  sway = 0.02 * np.sin(2 * np.pi * 0.5 * t)
  punch = 0.25 * np.sin(2 * np.pi * 1.2 * t)
  for side, sign in (("right", 1), ("left", -1)):
    p[:, J[f"{side}_wrist"]] = np.stack([sign * 0.04 + sway, 0.2 + np.maximum(sign * punch, 0),
                                         np.full(T, 1.3)], -1)
  gap = np.linalg.norm(p[:, J["left_wrist"]] - p[:, J["right_wrist"]], axis=-1)
  assert gap.min() < 0.1 and gap.max() > 0.25                 # close, then apart, repeatedly
  assert motion_text.measure(p, RATE).hands_meet == 0


def test_captions_are_deterministic_and_varied():
  assert captions(circle(1)) == captions(circle(1))
  assert len(set(captions(circle(1), range(20)))) >= 4


def test_bad_input_is_named():
  with pytest.raises(ValueError, match=r"\[T >= 2, 17, 3\] \(h36m17\), got \(250, 20, 3\)"):
    motion_text.measure(np.zeros((T, 20, 3)), RATE)
  p = standing()
  p[10, 3, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    motion_text.measure(p, RATE)
