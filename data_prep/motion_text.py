"""Captions computed from the motion itself: what the hands, legs and body do in a window.

Motion capture and skeleton datasets name an activity ("punch", "walk") but not the movement
that a wrist or thigh sensor feels, and a label vocabulary never covers the gestures of the
next dataset. Like PoseScript's and MotionScript's automatic captions, `describe` measures the
movement (in the body's own frame, so any facing direction reads the same) and writes it in
plain words: "someone swings the right hand to the left", "a person squats down and stands
back up", "someone jogs in place and moves both hands in circles". No label is read: the text
of a clip depends only on its joint positions, so any skeleton source gets it, labelled or not.

Input: h36m17 positions [T, 17, 3] in metres, z up (every converter's skeleton before
`root_relative`). What is measured (`measure`, all in the body frame: right, forward, up,
fixed per window from the mean hip line):
  locomotion   pelvis speed over the ground and its direction; turning (facing change);
               stepping in place (ankle lifts) and their cadence
  posture      pelvis height relative to leg length at start, end and lowest (squat, sit
               down, stand up); trunk lean (bend forward); lunge (one foot far ahead, hips low)
  hands        per wrist relative to the pelvis: range along its principal axis, whether it
               circles (winding about its centre, clockwise as the subject sees it), the
               direction of its fastest stroke, repetitions, highest point (above the head,
               at the shoulders), hands meeting (clap) or crossing, elbow flexion (curl)
Phrases vary (synonyms and subjects chosen by `seed`), and at most one clause for the legs and
one for the arms is kept, so that captions stay short.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import signal

from mujo_jax.sim import skeletons

SKELETON = "h36m17"
_J = {name: i for i, name in enumerate(skeletons.get_skeleton(SKELETON).joint_names)}
SUBJECTS = ("a person", "someone", "the person")


@dataclasses.dataclass
class Hand:
  """One wrist's movement relative to the pelvis, body frame."""
  side: str                # "right" | "left"
  extent: float            # m, 5-95 % range of the stroke along its principal axis
  axis: str                # "right" | "forward" | "up": the principal axis' largest part
  stroke: int              # +1 / -1: direction of the fastest movement along `axis`
  circles: float           # turns about the trajectory's centre, + counterclockwise as seen
  # by the subject (frontal plane), 0 when the path is not round
  repeats: int             # strokes along the principal axis (peaks of the projection)
  height: str              # "above the head" | "at shoulder height" | "" (highest point)
  elbow_range_deg: float   # range of the elbow angle
  raised: bool = False     # the stroke was measured while the hand was up (`_hand`)


@dataclasses.dataclass
class Motion:
  """The measures `describe` words (module docstring)."""
  speed: float             # m/s, pelvis over the ground, start to end
  heading: str             # "forward" | "backward" | "to the left" | "to the right"
  turn_deg: float          # + left (counterclockwise from above)
  cadence: float           # ankle lifts per second (both feet)
  pelvis_start: float      # pelvis height / leg length, first and last fifth, lowest
  pelvis_end: float
  pelvis_low: float
  squats: int              # dips of the pelvis that come back up
  lean_deg: float          # largest trunk angle from vertical
  lunge: str               # "" | "left" | "right": the foot that steps far ahead, hips low
  kick: str                # "" | "left" | "right": an ankle raised to hip height
  hands: tuple[Hand, ...]  # the moving hands, larger movement first
  hands_meet: int          # times both wrists come together
  arms_crossed: bool


def _smooth(x: np.ndarray, rate_hz: float) -> np.ndarray:
  """Savitzky-Golay over ~0.25 s: Kinect and lifted poses jitter at a few centimetres."""
  n = max(5, int(round(0.25 * rate_hz)) | 1)
  if len(x) <= n:
    return x
  return signal.savgol_filter(x, n, 2, axis=0)


def _body_frame(p: np.ndarray) -> np.ndarray:
  """Rows right, forward, up (world coordinates) from the mean hip line, shoulders if level."""
  right = (p[:, _J["right_hip"]] - p[:, _J["left_hip"]]).mean(axis=0)
  right[2] = 0.0
  if np.linalg.norm(right) < 1e-3:
    right = (p[:, _J["right_shoulder"]] - p[:, _J["left_shoulder"]]).mean(axis=0)
    right[2] = 0.0
  right = right / max(np.linalg.norm(right), 1e-9)
  up = np.array([0.0, 0.0, 1.0])
  return np.stack([right, np.cross(up, right), up])


def _yaw(p: np.ndarray) -> np.ndarray:
  """Facing angle per frame (radians, counterclockwise from above), from the hip line."""
  hips = p[:, _J["right_hip"]] - p[:, _J["left_hip"]]
  return np.unwrap(np.arctan2(hips[:, 1], hips[:, 0]))


def _range(x: np.ndarray) -> float:
  return float(np.percentile(x, 95) - np.percentile(x, 5))


def _longest_run(flags: np.ndarray) -> slice:
  """The longest stretch of True in a boolean array (empty slice if none)."""
  best, start = slice(0, 0), None
  for i, f in enumerate(np.append(flags, False)):
    if f and start is None:
      start = i
    elif not f and start is not None:
      if i - start > best.stop - best.start:
        best = slice(start, i)
      start = None
  return best


def _principal(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """x [T, 3] -> (x centred, principal axes vt [3, 3] as rows, projection [T, 2] on the first
  two)."""
  centred = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred, vt, centred @ vt[:2].T


def _hand(side: str, local: np.ndarray, rate_hz: float, head_z: float, shoulder_z: float,
          elbow_deg: np.ndarray) -> Hand:
  """Measures one wrist trajectory [T, 3] (body frame, relative to the pelvis).

  A gesture is mostly made with the hand raised: lifting it from the side and dropping it
  back would otherwise be the largest movement of nearly every gesture. When the hand rests
  low and rises (> 0.25 m), the stroke is measured over the longest stretch with the hand up,
  if the hand moves there (> 0.15 m); else over the whole window.
  """
  raised = None
  z = local[:, 2]
  speed = np.linalg.norm(np.gradient(local, axis=0), axis=-1) * rate_hz
  low = z < np.percentile(z, 5) + 0.3 * _range(z)
  if _range(z) > 0.25 and np.median(speed[low]) < 0.1:     # rests low, rises, comes back
    run = _longest_run(z > np.percentile(z, 5) + 0.6 * _range(z))
    if run.stop - run.start >= 0.4 * rate_hz:
      up = _principal(local[run])
      if _range(up[2][:, 0]) > 0.15:
        raised = up
  part = local if raised is None else local[run]
  centred, vt, proj = _principal(local) if raised is None else raised
  extent, second = _range(proj[:, 0]), _range(proj[:, 1])
  axis = ("right", "forward", "up")[int(np.argmax(np.abs(vt[0])))]
  k = ("right", "forward", "up").index(axis)
  velocity = np.gradient(part[:, k]) * rate_hz
  stroke = int(np.sign(velocity[np.argmax(np.abs(velocity))]) or 1)
  circles = 0.0
  if second > 0.45 * extent:
    # Winding in the frontal plane (right, up): counterclockwise as the subject sees it,
    # since right x up points back at the subject's eyes.
    frontal = centred[:, [0, 2]]
    angle = np.unwrap(np.arctan2(frontal[:, 1], frontal[:, 0]))
    radius = np.linalg.norm(frontal, axis=1)
    if np.median(radius) > 0.25 * extent:
      circles = float((angle[-1] - angle[0]) / (2 * np.pi))
  peaks, _ = signal.find_peaks(proj[:, 0], prominence=0.4 * extent)
  troughs, _ = signal.find_peaks(-proj[:, 0], prominence=0.4 * extent)
  top = float(local[:, 2].max())
  height = ("above the head" if top > head_z else
            "at shoulder height" if top > shoulder_z - 0.1 else "")
  return Hand(side=side, extent=extent, axis=axis, stroke=stroke, circles=circles,
              repeats=max(len(peaks), len(troughs)), height=height,
              elbow_range_deg=_range(elbow_deg), raised=raised is not None)


def _elbow_angle(p: np.ndarray, side: str) -> np.ndarray:
  upper = p[:, _J[f"{side}_shoulder"]] - p[:, _J[f"{side}_elbow"]]
  lower = p[:, _J[f"{side}_wrist"]] - p[:, _J[f"{side}_elbow"]]
  cos = (upper * lower).sum(-1) / np.maximum(
      np.linalg.norm(upper, axis=-1) * np.linalg.norm(lower, axis=-1), 1e-9)
  return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def measure(positions: np.ndarray, rate_hz: float) -> Motion:
  """h36m17 positions [T, 17, 3] (metres, z up) -> `Motion`."""
  p = np.asarray(positions, np.float64)
  if p.ndim != 3 or p.shape[1:] != (len(_J), 3) or len(p) < 2:
    raise ValueError(f"positions must be [T >= 2, {len(_J)}, 3] ({SKELETON}), got {p.shape}")
  if not np.isfinite(p).all():
    raise ValueError("positions contain NaN or inf")
  p = _smooth(p, rate_hz)
  seconds = (len(p) - 1) / rate_hz
  frame = _body_frame(p)
  pelvis = p[:, _J["pelvis"]]
  floor = min(p[:, _J["left_ankle"], 2].min(), p[:, _J["right_ankle"], 2].min())
  leg = np.median(sum(np.linalg.norm(p[:, _J[f"right_{a}"]] - p[:, _J[f"right_{b}"]], axis=-1)
                      for a, b in (("hip", "knee"), ("knee", "ankle"))))
  leg = max(float(leg), 0.3)
  rel = (pelvis[:, 2] - floor) / leg                 # ~1 standing straight
  fifth = max(1, len(p) // 5)
  pelvis_start, pelvis_end = float(rel[:fifth].mean()), float(rel[-fifth:].mean())
  dips, _ = signal.find_peaks(-rel, prominence=0.18)

  ground = (pelvis[-1] - pelvis[0]) @ frame.T
  speed = float(np.hypot(ground[0], ground[1]) / max(seconds, 1e-9))
  if abs(ground[1]) >= abs(ground[0]):
    heading = "forward" if ground[1] > 0 else "backward"
  else:
    heading = "to the right" if ground[0] > 0 else "to the left"
  yaw = _yaw(p)
  turn = float(np.degrees(yaw[-fifth:].mean() - yaw[:fifth].mean()))

  lifted = {side: p[:, _J[f"{side}_ankle"], 2] - floor for side in ("left", "right")}
  lifts = sum(len(signal.find_peaks(h, prominence=0.05, distance=max(1, int(0.15 * rate_hz)))[0])
              for h in lifted.values())
  cadence = lifts / max(seconds, 1e-9)

  trunk = p[:, _J["thorax"]] - pelvis
  lean = np.degrees(np.arccos(np.clip(trunk[:, 2] / np.maximum(
      np.linalg.norm(trunk, axis=-1), 1e-9), -1.0, 1.0)))

  local = {side: (p[:, _J[f"{side}_wrist"]] - pelvis) @ frame.T for side in ("left", "right")}
  ankles = {side: (p[:, _J[f"{side}_ankle"]] - pelvis) @ frame.T for side in ("left", "right")}
  ahead = ankles["left"][:, 1] - ankles["right"][:, 1]
  lunge = ""
  if rel.min() < pelvis_start - 0.1 and np.abs(ahead).max() > 0.6 * leg:
    lunge = "left" if ahead[np.argmax(np.abs(ahead))] > 0 else "right"
  kick = ""
  for side in ("left", "right"):
    if lifted[side].max() > 0.5 * leg and ankles[side][:, 1].max() > 0.3 * leg and not kick:
      kick = side

  head_z = float(np.median((p[:, _J["head"]] - pelvis) @ frame[2]))
  shoulder_z = float(np.median((p[:, _J["right_shoulder"]] - pelvis) @ frame[2]))
  hands = []
  for side in ("right", "left"):
    h = _hand(side, local[side], rate_hz, head_z, shoulder_z, _elbow_angle(p, side))
    if h.extent > 0.15 or h.elbow_range_deg > 60:
      hands.append(h)
  hands.sort(key=lambda h: -h.extent)
  gap = np.linalg.norm(p[:, _J["left_wrist"]] - p[:, _J["right_wrist"]], axis=-1)
  meets, _ = signal.find_peaks(-gap, height=-0.15, prominence=0.15)
  # A clap brings the hands together from both sides (their sideways velocities oppose);
  # alternating punches from a guard bring them close too, but not towards each other.
  sideways = [np.gradient(local[s][:, 0]) for s in ("left", "right")]
  mirrored = float(np.corrcoef(*sideways)[0, 1]) < -0.3 if min(
      np.std(v) for v in sideways) > 1e-6 else False
  crossed = bool(np.mean(local["left"][:, 0] > local["right"][:, 0] + 0.05) > 0.3)
  return Motion(speed=speed, heading=heading, turn_deg=turn, cadence=cadence,
                pelvis_start=pelvis_start, pelvis_end=pelvis_end, pelvis_low=float(rel.min()),
                squats=int(sum(1 for d in dips if rel[d] < 0.82)),
                lean_deg=float(lean.max()), lunge=lunge, kick=kick, hands=tuple(hands),
                hands_meet=len(meets) if mirrored else 0, arms_crossed=crossed)


def _pick(rng: np.random.Generator, options) -> str:
  return options[int(rng.integers(len(options)))]


def _legs_clause(m: Motion, rng: np.random.Generator) -> str:
  """The lower body's most salient movement, or "" when it barely moves."""
  if m.pelvis_end < 0.55 and m.lean_deg > 60:
    return _pick(rng, ("lies down", "gets down to lie on the floor"))
  if m.pelvis_start - m.pelvis_end > 0.18 and m.pelvis_end < 0.85:
    return _pick(rng, ("sits down", "lowers the body from standing to sitting",
                       "goes down from standing to a seat"))
  if m.pelvis_end - m.pelvis_start > 0.18 and m.pelvis_start < 0.85:
    return _pick(rng, ("stands up", "rises from sitting to standing", "gets up"))
  if m.lunge:
    return _pick(rng, (f"steps forward into a lunge with the {m.lunge} leg",
                       f"lunges forward on the {m.lunge} foot"))
  if m.squats:
    many = m.squats > 1
    return _pick(rng, ("squats down repeatedly" if many else "squats down and stands back up",
                       "bends the knees and lowers the hips" + (" again and again" if many
                                                                 else ", then rises")))
  if m.kick:
    return _pick(rng, (f"kicks with the {m.kick} leg", f"raises the {m.kick} foot in a kick"))
  turn = "left" if m.turn_deg > 0 else "right"
  if m.speed > 0.3:
    gait = ("runs", "jogs") if m.speed > 1.8 or m.cadence > 3.2 else ("walks", "steps")
    clause = f"{_pick(rng, gait)} {m.heading}"
    if abs(m.turn_deg) > 60:
      clause += f" and turns {turn}"
    return clause
  if abs(m.turn_deg) > 60:
    return _pick(rng, (f"turns to the {turn}", f"turns around to the {turn}"))
  if m.cadence > 2.4:
    return _pick(rng, ("jogs in place", "runs on the spot", "jogs on the spot"))
  if m.cadence > 0.8:
    return _pick(rng, ("walks in place", "steps in place", "marches on the spot"))
  if m.lean_deg > 40:
    return _pick(rng, ("bends forward", "leans the upper body forward", "bends over"))
  return ""


_SIDEWAYS = {1: ("to the right", "rightwards"), -1: ("to the left", "leftwards")}


def _arms_clause(m: Motion, rng: np.random.Generator) -> str:
  """The arms' most salient movement, or "" when the hands stay still."""
  if m.hands_meet >= 2:
    return _pick(rng, ("claps both hands together", "brings both hands together repeatedly",
                       "claps the hands in front of the body"))
  if m.arms_crossed:
    return _pick(rng, ("crosses the arms in front of the chest", "folds the arms across the chest"))
  if not m.hands:
    return ""
  h = m.hands[0]
  both = len(m.hands) > 1 and m.hands[1].extent > 0.6 * h.extent
  hand = "both hands" if both else f"the {h.side} hand"
  arm = "both arms" if both else f"the {h.side} arm"
  where = f" {h.height}" if h.height and rng.random() < 0.7 else ""
  if abs(h.circles) >= 0.75:
    turning = "counterclockwise" if h.circles > 0 else "clockwise"
    return _pick(rng, (f"moves {hand} in a {turning} circle{where}",
                       f"draws a {turning} circle with {hand}",
                       f"circles {arm} {turning}"))
  if h.extent < 0.15 and h.elbow_range_deg > 60:
    elbows = "both elbows" if both else f"the {h.side} elbow"
    return _pick(rng, (f"bends and straightens {elbows}", f"curls {arm}"))
  repeated = h.repeats >= 2
  if h.axis == "right":
    if repeated:
      return _pick(rng, (f"waves {hand} from side to side{where}",
                         f"sweeps {arm} left and right{where}"))
    words = _SIDEWAYS[h.stroke]
    return _pick(rng, (f"swings {arm} {words[0]}", f"swipes {hand} {words[0]}",
                       f"moves {hand} {words[1]}{where}"))
  if h.axis == "forward":
    if repeated:
      return _pick(rng, (f"pushes {hand} forward repeatedly",
                         f"punches forward again and again with {hand}",
                         f"moves {hand} back and forth"))
    if h.stroke > 0:
      return _pick(rng, (f"pushes {hand} forward", f"thrusts {arm} out in front",
                         f"reaches forward with {hand}"))
    return _pick(rng, (f"pulls {hand} back", f"draws {arm} back towards the body"))
  if repeated:
    return _pick(rng, (f"moves {hand} up and down{where}", f"raises and lowers {arm}"))
  if h.stroke > 0:
    return _pick(rng, (f"raises {hand}{where or ' up'}", f"lifts {arm} up{where}"))
  return _pick(rng, (f"lowers {hand}", f"brings {arm} down"))


def describe(positions: np.ndarray, rate_hz: float, seed: int = 0) -> str:
  """h36m17 positions [T, 17, 3] (metres, z up) -> one caption of the movement (module
  docstring); `seed` picks among equivalent phrasings."""
  m = measure(positions, rate_hz)
  rng = np.random.default_rng(seed)
  legs = _legs_clause(m, rng)
  arms = _arms_clause(m, rng)
  if m.speed > 0.3 and not any(h.height for h in m.hands) and not m.hands_meet:
    arms = ""    # the arms swing with the gait: nothing to say beyond walking or running
  clauses = [c for c in (legs, arms) if c]
  subject = _pick(rng, SUBJECTS)
  if not clauses:
    return f"{subject} {_pick(rng, ('stands still', 'stands without moving', 'stays still'))}"
  return f"{subject} {' and '.join(clauses)}"
