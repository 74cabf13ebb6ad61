r"""Converts real motion capture (BVH, ASF/AMC) to the record format, pose as h36m17.

  python -m data_prep.convert_mocap --out_dir=data/mocap \
      --mocap_dir=../shared/data/mocap/bandai_namco_1.tar.zst,../shared/data/mocap/\
bandai_namco_2.tar.zst,../shared/data/mocap/hdm05_subset.tar.zst [--workers=N] \
      [--placement_jitter=0.1] [--rig=NAME] [--asf=FILE] [--splits=...]

Inputs: each --mocap_dir entry is a folder (searched recursively for *.bvh and *.amc) or a
.tar.zst archive (unpacked with `tar --zstd` into a temporary folder for the run). An AMC's
skeleton is `HDM_{actor}.asf` in its folder or a parent (HDM05 naming), or --asf.
Parsing and forward kinematics: `mujo_jax.sources.bvh`, `mujo_jax.sources.asf_amc`.

Rigs: data_prep/rigs/*.json say which source joint (or the mean of several, or a point fixed in
a joint's frame) gives each h36m17 joint, the source's up axis and its units. A clip's rig is
the one whose joints the file has (--rig forces one); none fitting is an error listing the
file's joints and what each known rig lacks.

Per clip: joints -> h36m17 in metres, turned +z up (geometry.to_z_up) -> spline-resampled to
the 50 Hz grid (conversion.resample_positions; t = 0 at the first frame) -> consecutive
window_s windows, centred in the clip (the leftover, less than one window, is split between
both ends), like every converter without overlap (the converters have no stride). Many clips
are shorter than a window (HDM05 holds single repetitions, e.g. one hop of ~0.7 s): with
--short_clips=pad (default) a clip of at least --min_clip_s is centred in one window and padded
at rest, holding its first / last posture, as convert_utd_mhad pads its trials (no motion is
invented; a resting body reads gravity). A clip whose ends are still moving (fastest joint over
its first / last 0.1 s faster than --rest_speed) then stops abruptly at the padding, which the
virtual IMU reads as a jolt; such clips are counted (clips_padded_while_moving, end_speed_m_s
per clip). --short_clips=pad_at_rest drops them instead; drop drops every short clip. Virtual IMU at
all 16 locations (mask all 1), simulated once over the whole clip (mocap has no gaps); with
--placement_jitter=F every location of a clip sits at its default fraction along its segment
plus an offset drawn uniformly from [-F, F] (clipped to [0, 1]), seeded by the clip id. Pose
every 2nd grid sample (25 Hz), root-relative. No video (modality_mask video 0).

Labels and text. Bandai Namco: `dataset-{1,2}_{CONTENT}_{STYLE}_{ID}.bvh`; the class is the
content, the text a description of the content in the manner of the style. HDM05:
`HDM_{actor}_{motion}_{take}_{fps}.amc`, the class is the action of its folder number (1-11,
HDM05_ACTIONS) or else of the file name. class_names: the sorted labels present. Each window's
text is one of several phrasings, chosen by a hash of clip id and window index; a caption file
beside the clip (`<clip>_annotations.json`, a JSON list of strings, or `<clip>.txt`, one
caption per line) replaces the phrasings with its captions. --text=motion captions each
window's movement instead (data_prep/motion_text.py: "someone swings the right hand to the
left"), reading no label; --text=labels+motion picks one of the two per window (hash).

Splits, deterministic and keeping groups whole: Bandai dataset 2 by take id (takes 5, 10, 15,
20 -> val); Bandai dataset 1, whose takes are nearly all 001, by style (happy, sad -> val);
HDM05 by actor (tr -> val); everything else train. --splits overrides with
"takes:5,10;styles:happy;actors:tr". All sources go to one dataset (one class list).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import os
import re
import subprocess
import tempfile

from absl import app
from absl import flags
import numpy as np

from data_prep import conversion
from data_prep import motion_text
from data_prep import text
from mujo_jax import console
from mujo_jax import records
from mujo_jax.sim import skeletons
from mujo_jax.sim import virtual_imu
from mujo_jax.sources import asf_amc
from mujo_jax.sources import bvh
from mujo_jax.sources import geometry
from mujo_jax.sources import resampling

SKELETON = "h36m17"
RIGS_DIR = os.path.join(os.path.dirname(__file__), "rigs")
HDM05_FPS = 120.0
HDM05_ACTIONS = ("depositFloorR", "elbowToKnee", "grabHighR", "hopBothLegs", "jogLeftCircle",
                 "kickLFront", "lieDownFloor", "rotateArmsBothBackward", "sneak", "squat",
                 "throwBasketball")
DEFAULT_SPLITS = {"takes": (5, 10, 15, 20), "styles": ("happy", "sad"), "actors": ("tr",)}
_BANDAI = re.compile(r"^dataset-(\d+)_(.+)_([a-z-]+)_(\d+)$")
_HDM05 = re.compile(r"^HDM_([a-z]+)_(.+)_(\d+)_(\d+)$")

TEXT_SOURCES = {
    "labels": "templates of the content/action and style labels (or the clip's caption file)",
    "motion": "captions of each window's movement (data_prep/motion_text.py), no label read",
    "labels+motion": "per window either label templates or a caption of the movement "
                     "(data_prep/motion_text.py)",
}
# Phrasings: third-person verb phrases and gerund phrases per content / action.
ACTIONS = {
    "walk": (("walks", "walks forward", "takes a walk"), ("walking", "walking forward")),
    "walk-turn-left": (("walks and turns left", "walks forward, then turns to the left"),
                       ("walking and turning left",)),
    "walk-turn-right": (("walks and turns right", "walks forward, then turns to the right"),
                        ("walking and turning right",)),
    "walk-back": (("walks backwards", "steps back"), ("walking backwards",)),
    "walk-left": (("walks to the left", "walks sideways to the left"), ("walking leftwards",)),
    "walk-right": (("walks to the right", "walks sideways to the right"),
                   ("walking rightwards",)),
    "run": (("runs", "jogs forward", "runs ahead"), ("running", "jogging")),
    "dash": (("dashes forward", "sprints"), ("sprinting", "dashing ahead")),
    "wave-both-hands": (("waves both hands", "waves with both arms"), ("waving both hands",)),
    "wave-left-hand": (("waves the left hand", "waves with the left arm"),
                       ("waving the left hand",)),
    "wave-right-hand": (("waves the right hand", "waves with the right arm"),
                        ("waving the right hand",)),
    "raise-up-both-hands": (("raises both hands", "lifts both arms up"),
                            ("raising both hands",)),
    "raise-up-left-hand": (("raises the left hand", "lifts the left arm up"),
                           ("raising the left hand",)),
    "raise-up-right-hand": (("raises the right hand", "lifts the right arm up"),
                            ("raising the right hand",)),
    "bow": (("bows", "bows politely"), ("bowing",)),
    "bye": (("waves goodbye", "says bye with a wave"), ("waving goodbye",)),
    "byebye": (("waves goodbye with both hands", "says bye-bye"), ("waving bye-bye",)),
    "guide": (("gestures to guide someone the way", "points the way"), ("guiding someone",)),
    "call": (("calls someone over", "beckons someone"), ("calling someone over",)),
    "respond": (("responds to a call", "answers someone"), ("responding to a call",)),
    "punch": (("throws a punch", "punches"), ("punching",)),
    "kick": (("kicks", "throws a kick"), ("kicking",)),
    "slash": (("slashes with a sword", "swings a blade"), ("slashing",)),
    "dance-long": (("dances", "performs a dance"), ("dancing",)),
    "dance-short": (("dances", "does a short dance"), ("dancing",)),
    "depositFloorR": (("puts something down on the floor with the right hand",
                       "bends down and places an object on the floor"),
                      ("depositing something on the floor",)),
    "elbowToKnee": (("touches an elbow to the opposite knee", "brings the elbow to the knee"),
                    ("doing elbow-to-knee crunches",)),
    "grabHighR": (("reaches up high with the right hand to grab something",
                   "grabs an object from a high shelf"), ("reaching up to grab something",)),
    "hopBothLegs": (("hops on both legs", "jumps with both feet together"),
                    ("hopping on both legs",)),
    "jogLeftCircle": (("jogs in a circle to the left", "runs a left-hand circle"),
                      ("jogging in a circle",)),
    "kickLFront": (("kicks forward with the left leg", "does a front kick with the left foot"),
                   ("kicking to the front",)),
    "lieDownFloor": (("lies down on the floor", "gets down to lie on the ground"),
                     ("lying down on the floor",)),
    "rotateArmsBothBackward": (("circles both arms backwards", "rotates the arms backwards"),
                               ("rotating both arms backwards",)),
    "sneak": (("sneaks forward", "tiptoes quietly"), ("sneaking",)),
    "squat": (("squats", "does a squat", "bends the knees into a squat"), ("squatting",)),
    "throwBasketball": (("throws a basketball", "shoots a ball like a basketball player"),
                        ("throwing a basketball",)),
}
# Manner phrases appended to a verb phrase, per Bandai style.
STYLES = {
    "normal": ("", " normally", " in an ordinary way"),
    "active": (" energetically", " in an active, lively way", " briskly"),
    "elderly": (" in an elderly manner", " like an old person", " slowly and stiffly"),
    "old": (" in an elderly manner", " like an old person", " slowly and stiffly"),
    "exhausted": (", exhausted", " wearily", " as if worn out"),
    "tired": (", tired", " wearily", " as if worn out"),
    "feminine": (" in a feminine way", " gracefully"),
    "masculine": (" in a masculine way", " with a broad, manly gait"),
    "masculinity": (" in a masculine way", " with a broad, manly gait"),
    "youthful": (" youthfully", " in a young, bouncy way"),
    "childish": (" childishly", " like a child"),
    "happy": (" happily", ", looking cheerful"),
    "sad": (" sadly", ", looking downcast"),
    "angry": (" angrily", ", looking furious"),
    "proud": (" proudly", " with a proud posture"),
    "not-confident": (" timidly", " without confidence"),
    "musical": (" like in a musical", " theatrically"),
    "giant": (" like a giant", " with heavy, huge steps"),
    "chimpira": (" like a thug", " with a swaggering, tough attitude"),
}
SUBJECTS = ("a person", "someone", "the subject")


@dataclasses.dataclass(frozen=True)
class Rig:
  """A rig mapping file (data_prep/rigs/*.json). joints: h36m17 name -> a source joint, a
  list of source joints (their mean) or {"joint": name, "offset": [x, y, z]} (a point fixed
  in that joint's frame, file units)."""
  name: str
  format: str
  up: tuple[float, float, float]
  units_to_m: float | None
  joints: dict

  def source_joints(self) -> set[str]:
    names = set()
    for spec in self.joints.values():
      names.update([spec] if isinstance(spec, str) else spec if isinstance(spec, list)
                   else [spec["joint"]])
    return names


@dataclasses.dataclass(frozen=True)
class Clip:
  clip_id: str
  path: str
  source: str                   # bandai_namco_1, bandai_namco_2, hdm05, bvh, amc
  label: str | None
  style: str | None
  group: str                    # what decides the split: take, style or actor
  asf: str | None = None
  fps: float | None = None      # AMC: from an HDM05 file name (..._120.amc)


@dataclasses.dataclass(frozen=True)
class Settings:
  info: records.DatasetInfo
  rigs: tuple[Rig, ...]
  rig: str | None
  min_clip_s: float
  placement_jitter: float
  smoothing_s: float
  amc_fps: float
  short_clips: str = "pad"
  rest_speed: float = 0.5
  text: str = "labels"


def load_rigs(rigs_dir: str = RIGS_DIR) -> tuple[Rig, ...]:
  """Every rig file in rigs_dir, sorted by name; each needs all 17 h36m17 joints."""
  target = set(skeletons.get_skeleton(SKELETON).joint_names)
  rigs = []
  for path in sorted(glob.glob(os.path.join(rigs_dir, "*.json"))):
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
    try:
      rig = Rig(name=d["name"], format=d["format"], up=tuple(float(v) for v in d["up"]),
                units_to_m=d.get("units_to_m"), joints=dict(d["joints"]))
    except (KeyError, TypeError, ValueError) as e:
      raise conversion.ConversionError(f"{path}: not a rig file ({e!r})") from e
    if set(rig.joints) != target or rig.format not in ("bvh", "asf_amc"):
      raise conversion.ConversionError(
          f"{path}: a rig maps exactly the h36m17 joints {sorted(target)} and has format bvh "
          f"or asf_amc; missing {sorted(target - set(rig.joints))}, extra "
          f"{sorted(set(rig.joints) - target)}, format {rig.format!r}")
    rigs.append(rig)
  return tuple(rigs)


def pick_rig(joint_names, rigs, path: str, fmt: str, forced: str | None = None) -> Rig:
  """The rig (of format fmt) whose source joints the file has; forced: that rig by name."""
  candidates = [r for r in rigs if r.format == fmt and (forced is None or r.name == forced)]
  fits = [r for r in candidates if r.source_joints() <= set(joint_names)]
  if fits:
    return fits[0]
  lacks = "; ".join(f"{r.name} lacks {sorted(r.source_joints() - set(joint_names))}"
                    for r in candidates) or f"no {fmt} rig named {forced!r}"
  raise conversion.ConversionError(
      f"{path}: no rig fits its joints {list(joint_names)}; known rigs: {lacks} "
      f"(add a rig file to data_prep/rigs/ or pass --rig)")


def map_joints(motion, rig: Rig, metres_per_unit: float) -> np.ndarray:
  """A posed source clip -> h36m17 positions [T, 17, 3] in metres, +z up."""
  index = {name: i for i, name in enumerate(motion.joint_names)}
  out = []
  for name in skeletons.get_skeleton(SKELETON).joint_names:
    spec = rig.joints[name]
    if isinstance(spec, str):
      out.append(motion.positions[:, index[spec]])
    elif isinstance(spec, list):
      out.append(motion.positions[:, [index[s] for s in spec]].mean(axis=1))
    else:
      j = index[spec["joint"]]
      out.append(motion.positions[:, j] + motion.rotations[:, j] @ np.asarray(spec["offset"],
                                                                                float))
  return geometry.to_z_up(np.stack(out, axis=1) * metres_per_unit, rig.up)


def load_clip(clip: Clip, settings: Settings) -> tuple[np.ndarray, float, str]:
  """A clip -> (h36m17 positions [T, 17, 3] metres z up, fps, rig name)."""
  if clip.path.endswith(".bvh"):
    motion = bvh.load(clip.path)
    rig = pick_rig(motion.joint_names, settings.rigs, clip.path, "bvh", settings.rig)
    scale = rig.units_to_m
  else:
    motion = asf_amc.load(clip.path, clip.asf, fps=clip.fps or settings.amc_fps)
    rig = pick_rig(motion.joint_names, settings.rigs, clip.path, "asf_amc", settings.rig)
    scale = rig.units_to_m or motion.metres_per_unit
  fps = motion.fps
  if abs(fps - round(fps)) < 1e-3 * fps:
    fps = float(round(fps))  # BVH writes 1/30 s as 0.0333333
  return map_joints(motion, rig, scale), fps, rig.name


def end_speed(grid: np.ndarray, rate_hz: float, span_s: float = 0.1) -> float:
  """The fastest joint's mean speed (m/s) over the first or the last span_s of a clip [N, J, 3]:
  how far from rest its ends are, which decides whether padding it at rest is believable."""
  k = min(len(grid) - 1, max(1, int(round(span_s * rate_hz))))
  moved = np.maximum(np.linalg.norm(grid[k] - grid[0], axis=-1),
                     np.linalg.norm(grid[-1] - grid[-1 - k], axis=-1))
  return float(moved.max() * rate_hz / k)


def _unit_hash(*parts) -> int:
  return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")


def placement(clip_id: str, jitter: float, locations) -> dict[str, float] | None:
  """Per location: the default fraction along its segment + U[-jitter, jitter], from clip_id."""
  if not jitter:
    return None
  rng = np.random.default_rng(_unit_hash("placement", clip_id))
  offsets = rng.uniform(-jitter, jitter, len(locations))
  default = virtual_imu.default_placement(locations, SKELETON)
  return {loc: float(np.clip(default[loc] + o, 0.0, 1.0)) for loc, o in zip(locations, offsets)}


def make_clip(task) -> conversion.ClipResult:
  """One clip -> its windows (module docstring). task = (Clip, Settings, ids [K, L], lens [K])."""
  clip, settings, text_ids, text_lens = task
  info = settings.info
  result = conversion.ClipResult()
  src = clip.source
  positions, fps, rig = load_clip(clip, settings)
  duration = (len(positions) - 1) / fps
  details = {"clip_id": clip.clip_id, "source": src, "rig": rig, "duration_s": round(duration, 3)}
  result.details = details
  result.counts[f"{src}/clips"] += 1
  if len(positions) < 2 or duration < settings.min_clip_s:
    result.counts[f"{src}/clips_dropped_shorter_than_min_clip_s"] += 1
    details["dropped"] = f"shorter than min_clip_s {settings.min_clip_s}"
    return result
  t_grid = resampling.grid(duration, info.imu_rate_hz)
  grid = conversion.resample_positions(np.arange(len(positions)) / fps, positions, t_grid,
                                       max_gap_s=1.0)
  window = info.imu_window
  n = len(grid) // window
  if n == 0:
    speed = end_speed(grid, info.imu_rate_hz)
    details["end_speed_m_s"] = round(speed, 3)
    moving = speed > settings.rest_speed
    if settings.short_clips == "drop" or (moving and settings.short_clips == "pad_at_rest"):
      why = "shorter_than_window" if settings.short_clips == "drop" else "short_and_moving"
      result.counts[f"{src}/clips_dropped_{why}"] += 1
      details["dropped"] = why.replace("_", " ")
      return result
    result.counts[f"{src}/clips_padded_while_moving"] += moving
    before = (window - len(grid)) // 2
    grid = np.pad(grid, ((before, window - len(grid) - before), (0, 0), (0, 0)), mode="edge")
    result.counts[f"{src}/clips_padded_at_rest"] += 1
    details["padded_s"] = round((window - len(t_grid)) / info.imu_rate_hz, 3)
    n, offset = 1, 0
  else:
    offset = (len(grid) - n * window) // 2
    details["unused_s"] = round((len(grid) - n * window) / info.imu_rate_hz, 2)
    result.counts[f"{src}/grid_samples_unused"] += len(grid) - n * window
  try:
    imu = virtual_imu.simulate_imu(grid, fps=info.imu_rate_hz, skeleton=SKELETON,
                                   locations=info.imu_locations, rate_hz=info.imu_rate_hz,
                                   smoothing_s=settings.smoothing_s,
                                   placement=placement(clip.clip_id, settings.placement_jitter,
                                                       info.imu_locations))
  except ValueError as e:
    result.counts[f"{src}/windows_dropped_simulator"] += n
    details["dropped"] = f"virtual IMU failed: {e}"
    return result
  label = info.class_names.index(clip.label) if clip.label is not None else -1
  step = conversion.pose_step(info)
  for w in range(n):
    a = offset + w * window
    example = {
        "imu": imu[:, a:a + window], "imu_location_mask": np.ones(len(info.imu_locations),
                                                                  np.int64),
        "pose": conversion.root_relative(grid[a:a + window:step], SKELETON),
        "label": label, "clip_id": clip.clip_id, "window_index": w,
    }
    use_motion = settings.text == "motion" or (
        settings.text == "labels+motion" and (text_ids is None or _unit_hash(
            "text source", clip.clip_id, w) % 2))
    if use_motion:
      caption = motion_text.describe(grid[a:a + window], info.imu_rate_hz,
                                     seed=_unit_hash("caption", clip.clip_id, w))
      ids, lens = text.encode([caption], info.text_len)
      example["text_ids"], example["text_len"] = ids[0], int(lens[0])
    elif text_ids is not None:
      k = _unit_hash("text", clip.clip_id, w) % len(text_ids)
      example["text_ids"], example["text_len"] = text_ids[k], int(text_lens[k])
    result.examples.append(example)
  result.counts[f"{src}/windows_kept"] += n
  return result


# ---------------------------------------------------------------------------------------------
# Finding clips, labels, texts, splits


def _find_asf(amc: str, actor: str | None, asf: str | None) -> str | None:
  if asf:
    return asf
  if actor is None:
    return None
  folder = os.path.dirname(os.path.abspath(amc))
  while True:
    path = os.path.join(folder, f"HDM_{actor}.asf")
    if os.path.isfile(path):
      return path
    parent = os.path.dirname(folder)
    if parent == folder:
      return None
    folder = parent


def describe(path: str, asf: str | None = None) -> Clip:
  """A clip file -> its Clip: source, label, style and split group from its name and folder."""
  stem = os.path.splitext(os.path.basename(path))[0]
  if path.endswith(".bvh"):
    m = _BANDAI.match(stem)
    if m:
      dataset, content, style, take = m.groups()
      group = f"style:{style}" if dataset == "1" else f"take:{int(take)}"
      return Clip(stem, path, f"bandai_namco_{dataset}", content, style, group)
    return Clip(stem, path, "bvh", None, None, "other")
  m = _HDM05.match(stem)
  actor = m.group(1) if m else None
  found = _find_asf(path, actor, asf)
  if found is None:
    raise conversion.ConversionError(f"{path}: no ASF skeleton for it (HDM_{{actor}}.asf in its "
                                     "folder or a parent); pass --asf")
  if not m:
    return Clip(stem, path, "amc", None, None, "other", found)
  folder = os.path.basename(os.path.dirname(path))
  action = None
  if folder.isdigit() and 1 <= int(folder) <= len(HDM05_ACTIONS):
    action = HDM05_ACTIONS[int(folder) - 1]
  named = [a for a in HDM05_ACTIONS if m.group(2).startswith(a)]
  if action is None:
    action = named[0] if named else None
  elif named and named[0] != action:
    raise conversion.ConversionError(f"{path}: folder {folder} is action {action!r} but the file "
                                     f"name says {named[0]!r}")
  return Clip(stem, path, "hdm05", action, None, f"actor:{actor}", found, float(m.group(4)))


def captions(path: str) -> list[str] | None:
  """Captions from `<clip>_annotations.json` or `<clip>.txt` beside the clip, if any."""
  stem = os.path.splitext(path)[0]
  if os.path.isfile(stem + "_annotations.json"):
    with open(stem + "_annotations.json", encoding="utf-8") as f:
      found = json.load(f)
    if not isinstance(found, list) or not all(isinstance(c, str) for c in found):
      raise conversion.ConversionError(f"{stem}_annotations.json: not a JSON list of strings")
  elif os.path.isfile(stem + ".txt"):
    with open(stem + ".txt", encoding="utf-8") as f:
      found = f.read().splitlines()
  else:
    return None
  found = [c.strip() for c in found if c.strip()]
  return found or None


def phrasings(label: str | None, style: str | None) -> list[str]:
  """Every text of a label in a style: subject + verb phrase + manner, and gerund + manner."""
  key = next((a for a in ACTIONS if a == label), None)
  if key is None:
    return [label.replace("-", " ")] if label else []
  verbs, gerunds = ACTIONS[key]
  manners = STYLES.get(style, (f" in a {style} style",) if style else ("",))
  return ([f"{s} {v}{m}" for s in SUBJECTS for v in verbs for m in manners]
          + [f"{g}{m}".strip() for g in gerunds for m in manners])


def split_of(clip: Clip, splits) -> str:
  kind, _, value = clip.group.partition(":")
  val = {"take": {int(t) for t in splits.get("takes", ())},
         "style": set(splits.get("styles", ())), "actor": set(splits.get("actors", ()))}
  if kind == "take":
    return "val" if int(value) in val["take"] else "train"
  if kind in val:
    return "val" if value in val[kind] else "train"
  return "train"


def parse_splits(spec: str) -> dict[str, tuple]:
  """"takes:5,10;styles:happy;actors:tr" -> {"takes": ("5", "10"), ...} (val groups)."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(";"))):
    key, _, values = part.partition(":")
    if key not in ("takes", "styles", "actors"):
      raise ValueError(f"--splits {spec!r}: {key!r} is not takes, styles or actors")
    out[key] = tuple(v.strip() for v in values.split(",") if v.strip())
  return out


def find_clips(root: str, asf: str | None = None) -> list[Clip]:
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    paths += [os.path.join(dirpath, f) for f in sorted(filenames)
              if f.endswith((".bvh", ".amc"))]
  return [describe(p, asf) for p in paths]


def unpack(archive: str, into: str) -> str:
  """A .tar.zst archive -> the folder it was unpacked into (with GNU tar and zstd)."""
  folder = os.path.join(into, os.path.basename(archive).removesuffix(".tar.zst"))
  os.makedirs(folder)
  proc = subprocess.run(["tar", "--zstd", "-xf", archive, "-C", folder], capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    raise conversion.ConversionError(f"{archive}: tar --zstd failed: {proc.stderr.strip()}")
  return folder


def build(mocap_dirs, out_dir: str, *, rig: str | None = None, asf: str | None = None,
          window_s: float = 5.0, min_clip_s: float = 0.4, short_clips: str = "pad",
          rest_speed: float = 0.5, placement_jitter: float = 0.0,
          smoothing_s: float = 0.2, amc_fps: float = HDM05_FPS, splits=None,
          max_clips_per_source: int | None = None, workers: int | None = None,
          records_per_shard: int = 256, text_len: int = 64, text_source: str = "labels",
          log=print) -> conversion.Report:
  """Converts the clips under mocap_dirs (folders or .tar.zst archives) into out_dir.

  text_source: "labels" (templates of the clip's labels, or its caption file), "motion"
  (`motion_text` captions of each window's movement, no label read) or "labels+motion" (one
  or the other per window, by a hash of clip and window).
  """
  if isinstance(mocap_dirs, str):
    mocap_dirs = [mocap_dirs]
  if short_clips not in ("pad", "pad_at_rest", "drop"):
    raise ValueError(f"short_clips must be pad, pad_at_rest or drop, got {short_clips!r}")
  if text_source not in TEXT_SOURCES:
    raise ValueError(f"text_source must be one of {TEXT_SOURCES}, got {text_source!r}")
  if not 0 <= placement_jitter <= 1:
    raise ValueError(f"placement_jitter must be in [0, 1], got {placement_jitter}")
  splits = DEFAULT_SPLITS if splits is None else splits
  with tempfile.TemporaryDirectory(prefix="convert_mocap_") as tmp:
    clips: list[Clip] = []
    for entry in mocap_dirs:
      folder = unpack(entry, tmp) if entry.endswith(".tar.zst") else entry
      if not os.path.isdir(folder):
        raise conversion.ConversionError(f"--mocap_dir {entry}: not a folder or .tar.zst")
      found = find_clips(folder, asf)
      if not found:
        raise conversion.ConversionError(f"--mocap_dir {entry}: no *.bvh or *.amc files")
      clips += found
    seen = {}
    for c in clips:
      if c.clip_id in seen:
        raise conversion.ConversionError(f"clip id {c.clip_id!r} twice: {seen[c.clip_id]} and "
                                         f"{c.path}")
      seen[c.clip_id] = c.path
    if max_clips_per_source:
      by_source = collections.defaultdict(list)
      for c in clips:
        by_source[c.source].append(c)
      clips = [c for cs in by_source.values() for c in cs[:max_clips_per_source]]
    tokenizer = text.load_tokenizer()
    class_names = tuple(sorted({c.label for c in clips if c.label is not None}))
    sources = sorted({c.source for c in clips})
    info = records.DatasetInfo(
        name="mocap", imu_locations=virtual_imu.SENSOR_LOCATIONS,
        joint_names=skeletons.get_skeleton(SKELETON).joint_names, class_names=class_names,
        tokenizer=text.TOKENIZER_NAME, vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_token_id, skeleton=SKELETON, window_s=window_s, text_len=text_len,
        pose_units="metres, root-relative (root: pelvis), +z up; mapped to h36m17 by "
                   "data_prep/rigs/*.json",
        video_features="none (motion capture has no video)",
        source=(f"real optical motion capture ({', '.join(sources)}), "
                "data_prep/convert_mocap.py: forward kinematics -> h36m17 -> virtual IMU at "
                f"every location; text: {TEXT_SOURCES[text_source]}. Bandai Namco "
                "Research Motiondataset: CC BY-NC 4.0 (non-commercial, attribution); HDM05 "
                "(Mueller et al. 2007): research use, cite its technical report"))
    texts: dict[str, list[str]] = {}
    for c in clips:
      texts[c.clip_id] = captions(c.path) or phrasings(c.label, c.style)
    unique = sorted({t for ts in texts.values() for t in ts})
    text.check_lengths(tokenizer, unique, text_len)
    tokens = {}
    if unique:
      ids, lens = text.tokenize(tokenizer, unique, info.text_len)
      tokens = {t: (ids[i], int(lens[i])) for i, t in enumerate(unique)}
    settings = Settings(info, load_rigs(), rig, min_clip_s, placement_jitter, smoothing_s,
                        amc_fps, short_clips, rest_speed, text_source)
    tasks = collections.defaultdict(list)
    for c in sorted(clips, key=lambda c: (c.source, c.clip_id)):
      ts = texts[c.clip_id]
      text_ids = np.stack([tokens[t][0] for t in ts]) if ts else None
      text_lens = np.array([tokens[t][1] for t in ts]) if ts else None
      tasks[split_of(c, splits)].append((c, settings, text_ids, text_lens))
    report_settings = {"inputs": [os.path.basename(d.rstrip("/")) for d in mocap_dirs],
                       "rig": rig, "window_s": window_s, "min_clip_s": min_clip_s,
                       "short_clips": short_clips, "rest_speed": rest_speed,
                       "placement_jitter": placement_jitter, "smoothing_s": smoothing_s,
                       "amc_fps": amc_fps, "text": text_source,
                       "val_groups": {k: list(v) for k, v in splits.items()},
                       "clips_per_source": dict(sorted(collections.Counter(
                           c.source for c in clips).items()))}
    return conversion.convert(out_dir, info, tasks, make_clip, workers=workers,
                              records_per_shard=records_per_shard, settings=report_settings,
                              log=log, name="convert_mocap")


FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so CLI modules import together cleanly."""
  flags.DEFINE_list("mocap_dir", None, "Folders (searched recursively for *.bvh, *.amc) or "
                    ".tar.zst archives.", required=True)
  flags.DEFINE_string("out_dir", None, "Where to write the dataset.", required=True)
  flags.DEFINE_string("rig", None, "Use this rig (data_prep/rigs/NAME.json) for every clip of "
                      "its format (default: the one whose joints the file has).")
  flags.DEFINE_string("asf", None, "ASF skeleton for every AMC (default: HDM_{actor}.asf "
                      "beside the clip or in a parent folder).")
  flags.DEFINE_float("window_s", 5.0, "Window length in seconds.")
  flags.DEFINE_float("min_clip_s", 0.4, "Clips shorter than this are dropped.")
  flags.DEFINE_enum("short_clips", "pad", ["pad", "pad_at_rest", "drop"], "Clips shorter than "
                    "a window: pad at rest (holding the end postures), pad only those whose ends "
                    "are at rest (<= --rest_speed), or drop them.")
  flags.DEFINE_float("rest_speed", 0.5, "Fastest joint speed (m/s) over a clip's first / last "
                     "0.1 s up to which its end counts as at rest.")
  flags.DEFINE_float("placement_jitter", 0.0, "Per clip and location, move the sensor by a "
                     "seeded fraction in [-F, F] of its segment around the default.")
  flags.DEFINE_float("smoothing_s", 0.2, "Virtual IMU smoothing window (s).")
  flags.DEFINE_float("amc_fps", HDM05_FPS, "Frame rate of AMC files (they carry none).")
  flags.DEFINE_string("splits", None, "Val groups, e.g. 'takes:5,10,15,20;styles:happy,sad;"
                      "actors:tr' (default that).")
  flags.DEFINE_integer("workers", None, "Worker processes (default: all CPUs; 0: in-process).")
  flags.DEFINE_integer("records_per_shard", 256, "Records per TFRecord shard.")
  flags.DEFINE_integer("text_len", 64, "Token ids per text, [CLS] and [SEP] included (a "
                       "longer caption is an error, never cut).")
  flags.DEFINE_enum("text", "labels", list(TEXT_SOURCES), "Each window's text: label "
                    "templates, a caption of its movement (data_prep/motion_text.py), or "
                    "either, by window.")


def main(argv):
  del argv
  console.setup()
  build(FLAGS.mocap_dir, FLAGS.out_dir, rig=FLAGS.rig, asf=FLAGS.asf, window_s=FLAGS.window_s,
        min_clip_s=FLAGS.min_clip_s, short_clips=FLAGS.short_clips,
        rest_speed=FLAGS.rest_speed, placement_jitter=FLAGS.placement_jitter,
        smoothing_s=FLAGS.smoothing_s, amc_fps=FLAGS.amc_fps,
        splits=parse_splits(FLAGS.splits) if FLAGS.splits else None, workers=FLAGS.workers,
        records_per_shard=FLAGS.records_per_shard, text_len=FLAGS.text_len,
        text_source=FLAGS.text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
