"""Motion capture sources: BVH and ASF/AMC forward kinematics, rigs, and convert_mocap."""

import filecmp
import json
import os
import tempfile

import numpy as np
import pytest

from data_prep import convert_mocap
from data_prep import text
from mujo_jax import records
from mujo_jax import tfrecord
from mujo_jax.sim import skeletons
from mujo_jax.sources import asf_amc
from mujo_jax.sources import bvh
from mujo_jax.sources import errors

MOCAP = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mocap")
QUIET = {"log": lambda *_: None}


def read_split(out_dir, split):
  info = records.DatasetInfo.load(str(out_dir))
  payloads = [p for path in info.shard_paths(str(out_dir), split)
              for _, p in tfrecord.iter_records(path)]
  return info, records.decode_batch(info, payloads)


# ---------------------------------------------------------------------------------------------
# BVH

CHAIN = """HIERARCHY
ROOT root
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT a
  {
    OFFSET 1 0 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    JOINT b
    {
      OFFSET 0 2 0
      CHANNELS 6 Xposition Yposition Zposition Xrotation Yrotation Zrotation
      End Site
      {
        OFFSET 0 0 3
      }
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.04
10 0 0 0 0 0   90 0 0   0 2 0 0 0 0
0 0 5 0 0 90   0 0 0   0 4 0 90 0 0
"""


def test_bvh_chain_by_hand():
  m = bvh.parse(CHAIN, "chain.bvh")
  assert m.joint_names == ("root", "a", "b", "b_End")
  assert m.parents == (-1, 0, 1, 2)
  assert m.fps == pytest.approx(25.0)
  # Frame 0: root at (10,0,0); a at root + (1,0,0), turned 90 deg about z, so b's offset
  # (0,2,0) (its position channels, equal to the offset) points along -x; b_End's (0,0,3) is
  # unchanged by a z rotation.
  np.testing.assert_allclose(m.positions[0], [[10, 0, 0], [11, 0, 0], [9, 0, 0], [9, 0, 3]],
                             atol=1e-9)
  # Frame 1: root at (0,0,5) turned 90 deg about y (x -> -z, z -> x); b's position channels
  # (0,4,0) replace its offset; b turned 90 deg about x (its local z -> -y), then about y.
  ry = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
  rx = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
  a = np.array([0, 0, 5]) + ry @ [1, 0, 0]
  b = a + ry @ [0, 4, 0]
  end = b + ry @ rx @ [0, 0, 3]
  np.testing.assert_allclose(m.positions[1], [[0, 0, 5], a, b, end], atol=1e-9)
  np.testing.assert_allclose(m.rotations[1, 2], ry @ rx, atol=1e-9)


def test_bvh_channel_order_is_intrinsic():
  # Zrotation then Xrotation (intrinsic): R = Rz(90) @ Rx(90); the child offset (0,1,0) goes
  # first to (0,0,1) by Rx, which Rz leaves alone. The opposite order would give (-1,0,0).
  src = CHAIN.replace("CHANNELS 3 Zrotation Xrotation Yrotation", "CHANNELS 2 Zrotation Xrotation")
  src = src.split("MOTION")[0] + "MOTION\nFrames: 1\nFrame Time: 0.01\n" + \
      "0 0 0 0 0 0  90 90  0 1 0 0 0 0\n"
  m = bvh.parse(src, "order.bvh")
  np.testing.assert_allclose(m.positions[0, 2], [1, 0, 1], atol=1e-9)


@pytest.mark.parametrize("bad, where", [
    (CHAIN.replace("Frames: 2", "Frames: 3"), "line 22: Frames says 3"),
    (CHAIN.replace("0 0 5 0 0 90", "0 0 5 0 0"), "line 25: frame has 14 values"),
    (CHAIN.replace("OFFSET 1 0 0", "OFFSET 1 0"), "line 8: joint 'a' OFFSET needs 3"),
    (CHAIN.replace("Xposition Yposition Zposition Xrotation", "Xposition Yposition Zposition Wrot"),
     "line 13: joint 'b': unknown"),
])
def test_bvh_errors_name_file_and_line(bad, where):
  with pytest.raises(errors.SourceError, match="bad.bvh, " + where):
    bvh.parse(bad, "bad.bvh")


# ---------------------------------------------------------------------------------------------
# ASF / AMC

ASF = """:version 1.10
:name test
:units
  mass 1.0
  length 0.45
  angle deg
:root
   order TX TY TZ RX RY RZ
   axis XYZ
   position 0 0 0
   orientation 0 0 0
:bonedata
  begin
     id 1
     name upper
     direction 0 -1 0
     length 2
     axis 0 0 90 XYZ
    dof rx ry rz
    limits (-180 180)
           (-180 180)
           (-180 180)
  end
  begin
     id 2
     name lower
     direction 1 0 0
     length 1
     axis 0 0 0 XYZ
    dof rx
  end
:hierarchy
  begin
    root upper
    upper lower
  end
"""

AMC = """:FULLY-SPECIFIED
:DEGREES
1
root 1 2 3 0 0 0
upper 0 0 0
lower 0
2
root 0 0 0 0 90 0
upper 90 0 0
lower 90
"""


def test_asf_amc_by_hand(tmp_path):
  (tmp_path / "s.asf").write_text(ASF)
  (tmp_path / "c.amc").write_text(AMC)
  m = asf_amc.load(str(tmp_path / "c.amc"), str(tmp_path / "s.asf"), fps=60)
  assert m.joint_names == ("root", "upper", "lower") and m.parents == (-1, 0, 1)
  assert m.metres_per_unit == pytest.approx(0.0254 / 0.45)
  # Frame 0: rest pose: bone ends = parent end + direction * length.
  np.testing.assert_allclose(m.positions[0], [[1, 2, 3], [1, 0, 3], [2, 0, 3]], atol=1e-9)
  # Frame 1: root turned 90 deg about y. upper's axis is 90 deg about z, so its rx dof turns
  # about C's x axis = world y: G = Ry(90) C Rx(90) C^-1 = Ry(90) Ry(90) = Ry(180), and
  # upper's direction (0,-1,0) is unchanged by it. lower: G = Ry(180) Rx(90).
  ry180 = np.diag([-1.0, 1.0, -1.0])
  rx90 = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
  upper = np.array([0, -2, 0])
  lower = upper + ry180 @ rx90 @ [1, 0, 0]
  np.testing.assert_allclose(m.positions[1], [[0, 0, 0], upper, lower], atol=1e-9)
  np.testing.assert_allclose(m.rotations[1, 1], ry180, atol=1e-9)


def test_amc_errors(tmp_path):
  (tmp_path / "s.asf").write_text(ASF)
  (tmp_path / "c.amc").write_text(AMC.replace("upper 90 0 0", "upper 90 0"))
  with pytest.raises(errors.SourceError, match=r"c.amc, line 9: bone 'upper' has 2 values"):
    asf_amc.load(str(tmp_path / "c.amc"), str(tmp_path / "s.asf"))


# ---------------------------------------------------------------------------------------------
# Rigs and the converter

BANDAI_JOINTS = [  # (name, parent, offset in cm): a person standing, Y up, facing +z
    ("joint_Root", None, (0, 0, 0)), ("Hips", "joint_Root", (0, 95, 0)),
    ("Spine", "Hips", (0, 15, 0)), ("Chest", "Spine", (0, 10, 0)), ("Neck", "Chest", (0, 16, 0)),
    ("Head", "Neck", (0, 7, 0)), ("Shoulder_L", "Chest", (5, 13, 0)),
    ("UpperArm_L", "Shoulder_L", (12, 0, 0)), ("LowerArm_L", "UpperArm_L", (0, -28, 0)),
    ("Hand_L", "LowerArm_L", (0, -25, 0)), ("Shoulder_R", "Chest", (-5, 13, 0)),
    ("UpperArm_R", "Shoulder_R", (-12, 0, 0)), ("LowerArm_R", "UpperArm_R", (0, -28, 0)),
    ("Hand_R", "LowerArm_R", (0, -25, 0)), ("UpperLeg_L", "Hips", (9, -3, 0)),
    ("LowerLeg_L", "UpperLeg_L", (0, -42, 0)), ("Foot_L", "LowerLeg_L", (0, -41, 0)),
    ("Toes_L", "Foot_L", (0, -8, 12)), ("UpperLeg_R", "Hips", (-9, -3, 0)),
    ("LowerLeg_R", "UpperLeg_R", (0, -42, 0)), ("Foot_R", "LowerLeg_R", (0, -41, 0)),
    ("Toes_R", "Foot_R", (0, -8, 12)),
]


def bandai_bvh(frames: int, motion=None, fps: float = 30.0, joints=BANDAI_JOINTS) -> str:
  """A BVH with the Bandai rig's joints, 6 channels each. Head is turned so that its local x
  points up, as in the real rig, whose head points lie along it. motion(t, name, offset,
  rotation) -> (offset, rotation) animates it; None: at rest."""
  children = {}
  for name, parent, _ in joints:
    children.setdefault(parent, []).append(name)
  offsets = {name: off for name, _, off in joints}
  lines = ["HIERARCHY"]

  def block(name, depth):
    pad = "  " * depth
    lines.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {name}")
    lines.append(f"{pad}{{")
    lines.append(f"{pad}  OFFSET {' '.join(map(str, offsets[name]))}")
    lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation "
                 "Yrotation")
    for child in children.get(name, []):
      block(child, depth + 1)
    if name not in children:
      lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET 0 0 0", f"{pad}  }}"])
    lines.append(f"{pad}}}")

  block(joints[0][0], 0)
  names = [n for n, _, _ in joints]
  order = []

  def walk(name):
    order.append(name)
    for child in children.get(name, []):
      walk(child)

  walk(names[0])
  lines += ["MOTION", f"Frames: {frames}", f"Frame Time: {1 / fps:.7f}"]
  for t in range(frames):
    row = []
    for name in order:
      off = np.array(offsets[name], float)
      rot = np.zeros(3)
      if name == "Head":
        rot[0] = 90.0  # Zrotation 90: the Head frame's local x points up, as in the real rig
      if motion is not None:
        off, rot = motion(t / fps, name, off, rot)
      row += [*off, *rot]
    lines.append(" ".join(f"{v:.6f}" for v in row))
  return "\n".join(lines) + "\n"


def test_rig_mapping_and_unknown_rig_error(tmp_path):
  m = bvh.parse(bandai_bvh(3), "rest.bvh")
  rigs = convert_mocap.load_rigs()
  rig = convert_mocap.pick_rig(m.joint_names, rigs, "rest.bvh", "bvh")
  assert rig.name == "bandai_namco"
  pose = convert_mocap.map_joints(m, rig, rig.units_to_m)
  names = skeletons.get_skeleton("h36m17").joint_names
  assert pose.shape == (3, 17, 3)
  # +z up, metres; the head top sits 17 cm above the Head joint along its local x (up).
  np.testing.assert_allclose(pose[0, names.index("head")], [0, 0, (95 + 15 + 10 + 16 + 7 + 17)
                                                             / 100], atol=1e-9)
  np.testing.assert_allclose(pose[0, names.index("pelvis")], [0, 0, 0.92], atol=1e-9)
  # Left is the person's left: +x in the file, facing +z (Y up) -> after to_z_up, x stays.
  assert pose[0, names.index("left_hip"), 0] > 0
  renamed = bandai_bvh(3, joints=[(n.replace("Hand_", "Wrist_"),
                                   p and p.replace("Hand_", "Wrist_"), o)
                                  for n, p, o in BANDAI_JOINTS])
  m2 = bvh.parse(renamed, "odd.bvh")
  with pytest.raises(errors.SourceError) as e:
    convert_mocap.pick_rig(m2.joint_names, rigs, "odd.bvh", "bvh")
  message = str(e.value)
  assert "odd.bvh" in message and "Wrist_L" in message and "UpperLeg_R" in message
  assert "bandai_namco lacks ['Hand_L', 'Hand_R']" in message


def _sway(t, name, off, rot):
  if name == "Hips":
    off = off + [10 * np.sin(2 * np.pi * 0.5 * t), 0, 20 * t]
  if name in ("UpperArm_L", "UpperArm_R"):
    rot = rot + [30 * np.sin(2 * np.pi * t), 0, 0]
  return off, rot


def test_convert_end_to_end(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "dataset-2_walk_normal_001.bvh").write_text(bandai_bvh(400, _sway))      # 13.3 s
  (src / "dataset-2_walk_elderly_005.bvh").write_text(bandai_bvh(200, _sway))     # 6.6 s: val
  (src / "dataset-2_wave-right-hand_exhausted_002.bvh").write_text(bandai_bvh(90))  # at rest
  (src / "dataset-2_run_active_003.bvh").write_text(bandai_bvh(10))               # too short
  outs = {}
  for workers in (0, 2):
    out = tmp_path / f"out{workers}"
    convert_mocap.build(str(src), str(out), workers=workers, placement_jitter=0.1, **QUIET)
    outs[workers] = out
  for name in sorted(os.listdir(outs[0])):
    assert filecmp.cmp(outs[0] / name, outs[2] / name, shallow=False), name
  info, train = read_split(outs[0], "train")
  _, val = read_split(outs[0], "val")
  assert info.skeleton == "h36m17" and info.class_names == ("run", "walk", "wave-right-hand")
  assert train["pose"].shape[1:] == (125, 17, 3) and train["imu"].shape[1:] == (16, 250, 6)
  clip_ids = [c.decode() for c in train["clip_id"]]
  assert clip_ids.count("dataset-2_walk_normal_001") == 2
  assert clip_ids.count("dataset-2_wave-right-hand_exhausted_002") == 1
  assert [c.decode() for c in val["clip_id"]] == ["dataset-2_walk_elderly_005"]
  assert (train["modality_mask"] == [1, 1, 0, 1]).all() and (train["imu_location_mask"] == 1).all()
  rest = clip_ids.index("dataset-2_wave-right-hand_exhausted_002")
  acc = np.linalg.norm(train["imu"][rest, :, :, :3].astype(np.float64), axis=-1)
  np.testing.assert_allclose(acc, 9.81, atol=0.02)
  np.testing.assert_allclose(train["imu"][rest, :, :, 3:], 0, atol=1e-3)
  tokenizer = text.load_tokenizer()
  texts = [tokenizer.decode(train["text_ids"][i, :train["text_len"][i]],
                            skip_special_tokens=True) for i in range(len(clip_ids))]
  assert all(texts) and len(set(texts)) == len(texts)
  assert "wav" in texts[rest] and ("exhaust" in texts[rest] or "wear" in texts[rest]
                                   or "worn" in texts[rest])
  report = json.loads((outs[0] / "conversion_report.json").read_text())
  counts = report["counts"]
  assert counts["bandai_namco_2/clips"] == 4
  assert counts["bandai_namco_2/clips_dropped_shorter_than_min_clip_s"] == 1
  assert counts["bandai_namco_2/clips_padded_at_rest"] == 1


def test_caption_file_replaces_phrasings(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "dataset-1_bow_happy_001.bvh").write_text(bandai_bvh(160))
  (src / "dataset-1_bow_normal_001.bvh").write_text(bandai_bvh(160))
  (src / "dataset-1_bow_normal_001_annotations.json").write_text('["a person bows deeply"]')
  convert_mocap.build(str(src), str(tmp_path / "out"), workers=0, **QUIET)
  tokenizer = text.load_tokenizer()
  _, train = read_split(tmp_path / "out", "train")
  assert tokenizer.decode(train["text_ids"][0, :train["text_len"][0]],
                          skip_special_tokens=True) == "a person bows deeply"
  _, val = read_split(tmp_path / "out", "val")  # style happy: val
  assert [c.decode() for c in val["clip_id"]] == ["dataset-1_bow_happy_001"]


def test_text_from_motion_reads_no_label(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "dataset-2_wave-right-hand_exhausted_001.bvh").write_text(bandai_bvh(90))  # at rest
  (src / "dataset-2_walk_normal_002.bvh").write_text(bandai_bvh(400, _sway))
  tokenizer = text.load_tokenizer()

  def texts(source):
    out = tmp_path / source
    convert_mocap.build(str(src), str(out), workers=0, text_source=source, text_len=32, **QUIET)
    info, train = read_split(out, "train")
    assert json.loads((out / "conversion_report.json").read_text())["settings"]["text"] == source
    assert info.text_len == 32 and source.split("+")[-1] in info.source
    return {(c.decode(), int(w)): tokenizer.decode(ids[:n], skip_special_tokens=True)
            for c, w, ids, n in zip(train["clip_id"], train["window_index"], train["text_ids"],
                                    train["text_len"])}

  motion = texts("motion")
  labels = texts("labels")
  rest = motion[("dataset-2_wave-right-hand_exhausted_001", 0)]
  assert "still" in rest or "without moving" in rest       # at rest, whatever the label says
  assert "wav" not in rest and "exhaust" not in rest
  assert "wav" in labels[("dataset-2_wave-right-hand_exhausted_001", 0)]
  both = texts("labels+motion")
  assert set(both) == set(motion) and all(both[k] in (motion[k], labels[k]) for k in both)
  assert {both[k] == motion[k] for k in both} == {True, False}   # some of each
  with pytest.raises(ValueError, match="text_source must be one of"):
    convert_mocap.build(str(src), str(tmp_path / "x"), text_source="captions", **QUIET)


# ---------------------------------------------------------------------------------------------
# The real archives


@pytest.mark.skipif(not os.path.isdir(MOCAP), reason=f"real motion capture not found at {MOCAP} "
                    "(../shared/data/mocap)")
def test_real_archives(tmp_path):
  archives = [os.path.join(MOCAP, f) for f in ("bandai_namco_1.tar.zst", "hdm05_subset.tar.zst")]
  report = convert_mocap.build(archives, str(tmp_path / "out"), workers=0,
                               max_clips_per_source=3, **QUIET)
  counts = report.counts
  assert counts["bandai_namco_1/clips"] == 3 and counts["hdm05/clips"] == 3
  info, train = read_split(tmp_path / "out", "train")
  assert len(train["clip_id"]) >= 6
  acc = np.linalg.norm(train["imu"][..., :3].astype(np.float64), axis=-1)
  assert 8.5 < np.median(acc) < 11.0
  # Un-rooted positions of one clip of each source: standing height and the floor.
  rigs = convert_mocap.load_rigs()
  settings = convert_mocap.Settings(info, rigs, rig=None, min_clip_s=0.4, placement_jitter=0.0,
                                     smoothing_s=0.2, amc_fps=120.0)
  names = info.joint_names
  for clip_id in sorted({c.decode() for c in train["clip_id"]}):
    path = report.clips[clip_id]
    assert path["rig"] in ("bandai_namco", "hdm05")
  with tempfile.TemporaryDirectory() as tmp:
    for archive in archives:
      folder = convert_mocap.unpack(archive, tmp)
      clip = convert_mocap.find_clips(folder)[0]
      pos, fps, _ = convert_mocap.load_clip(clip, settings)
      assert fps in (30.0, 120.0)
      head = pos[0, names.index("head"), 2]
      ankles = pos[:, [names.index("left_ankle"), names.index("right_ankle")], 2]
      assert 1.4 < head < 2.0, (clip.clip_id, head)
      assert 0.0 < ankles.min() < 0.2, (clip.clip_id, ankles.min())


def test_short_clips_policy(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "dataset-2_walk_normal_001.bvh").write_text(bandai_bvh(60, _sway))  # 2 s, arms swinging
  (src / "dataset-2_bow_normal_002.bvh").write_text(bandai_bvh(60))          # 2 s at rest
  counts = {}
  for policy in ("pad", "pad_at_rest"):
    report = convert_mocap.build(str(src), str(tmp_path / policy), workers=0, short_clips=policy,
                                 **QUIET)
    counts[policy] = report.counts
    assert report.clips["dataset-2_walk_normal_001"]["end_speed_m_s"] > 0.5
  assert counts["pad"]["bandai_namco_2/clips_padded_while_moving"] == 1
  assert counts["pad"]["train/windows"] == 2
  assert counts["pad_at_rest"]["bandai_namco_2/clips_dropped_short_and_moving"] == 1
  assert counts["pad_at_rest"]["train/windows"] == 1
