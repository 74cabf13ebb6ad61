"""The real-data converters: FiMAD-style manifests, UTD-MHAD (real data) and MM-Fit's layout.

Each test builds a tiny source tree in tmp_path (or reads the real UTD-MHAD), converts it, and
reads the records back.
"""

import filecmp
import json
import os
import shutil

import numpy as np
import pytest

from data_prep import conversion
from data_prep import convert_fimad
from data_prep import convert_mmfit
from data_prep import convert_utd_mhad
from data_prep import text
from mujo_jax import input_pipeline
from mujo_jax import records
from mujo_jax.sim import motion
from mujo_jax.sim import skeletons
from mujo_jax.sim import virtual_imu
from mujo_jax.sources import geometry
from mujo_jax.sources import mmfit
from mujo_jax.sources import utd_mhad
from mujo_jax import tfrecord

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
UTD_MHAD = os.path.join(SHARED, "utd_mhad")
MMFIT_LABELS = os.path.join(SHARED, "mmfit_labels")
QUIET = dict(log=lambda *_: None)


def read_split(out_dir, split):
  info = records.DatasetInfo.load(str(out_dir))
  payloads = [p for path in info.shard_paths(str(out_dir), split)
              for _, p in tfrecord.iter_records(path)]
  return info, records.decode_batch(info, payloads)


def decode_text(batch, i):
  tokenizer = text.load_tokenizer()
  return tokenizer.decode(batch["text_ids"][i, :batch["text_len"][i]], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# Helpers of conversion.py


def test_rotation_to_z_up_and_resampling_gaps():
  for up in ((0, 0, 1), (0, 1, 0), (0, -1, 0), (0, 0, -1), (1, 2, 3)):
    r = geometry.rotation_to_z_up(up)
    np.testing.assert_allclose(r @ (np.array(up) / np.linalg.norm(up)), [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
  # A joint missing for 1 s (> max_gap_s) leaves exactly that stretch unusable; a 0.12 s gap is
  # bridged by the spline (a quadratic is reproduced exactly); nothing beyond the last frame.
  t = np.arange(100) / 25.0
  pos = np.stack([np.stack([t ** 2, t, np.ones_like(t)], -1)] * 2, axis=1)
  pos[40:65, 1] = np.nan
  pos[10:13, 0] = np.nan
  t_out = np.arange(0, 4.2, 0.02)
  out = conversion.resample_positions(t, pos, t_out, max_gap_s=0.3)
  bad = ~np.isfinite(out).all(axis=-1)
  assert not bad[:, 0][t_out <= t[-1]].any() and bad[t_out > t[-1]].all()
  np.testing.assert_array_equal(bad[:, 1][t_out <= t[-1]],
                                ((t_out > t[39]) & (t_out < t[65]))[t_out <= t[-1]])
  ok = np.isfinite(out[:, 0, 0])
  np.testing.assert_allclose(out[ok, 0, 0], t_out[ok] ** 2, atol=1e-9)
  # Video: 1.6 Hz features and 8 steps per 5 s window -> features 8w .. 8w+7; past the end: None.
  feats = np.arange(20.0)[:, None]
  assert conversion.video_window(feats, 1.6, 5.0, 5.0, 8)[:, 0].tolist() == list(range(8, 16))
  assert conversion.video_window(feats, 1.6, 10.0, 5.0, 8) is None


# ---------------------------------------------------------------------------------------------
# FiMAD manifest


LANG = {"chapter": "Chapter 1", "normalized_chapter": "{ex}", "subtitles": "and go",
        "description": "Do it slowly."}


def make_fimad_source(root, clips=(("squats", 11.0, "train"), ("lunges", 16.0, "train"),
                                   ("pushups", 10.5, "val")), seed=0, nan_gap=None):
  """Writes pose/video .npy files, a manifest and a split file; returns their paths.

  nan_gap = (clip index, start s, length s, joint) blanks that joint for that time.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(root / "pose", exist_ok=True)
  os.makedirs(root / "video", exist_ok=True)
  lines, split = [], {"train": [], "val": [], "test": ["not_converted___0"]}
  for i, (exercise, seconds, which) in enumerate(clips):
    clip = f"yt{i:03d}___{i}"
    pose = motion.synthesize(exercise, seconds, 25.0, rng).astype(np.float32)
    if nan_gap and nan_gap[0] == i:
      pose[int(nan_gap[1] * 25):int((nan_gap[1] + nan_gap[2]) * 25), nan_gap[3]] = np.nan
    np.save(root / "pose" / f"{clip}.npy", pose)
    video = rng.normal(size=(int(seconds * 1.6) + 1, 1536)).astype(np.float32)
    np.save(root / "video" / f"{clip}.npy", video)
    language = {k: v.format(ex=exercise) for k, v in LANG.items()}
    lines.append({"clip_id": clip, "pose": f"pose/{clip}.npy", "pose_fps": 25,
                  "skeleton": "h36m17", "video": f"video/{clip}.npy", "video_rate_hz": 1.6,
                  "language": language, "label": exercise})
    split[which].append(clip)
  manifest, split_file = root / "clips.jsonl", root / "train_val_split.json"
  manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
  split_file.write_text(json.dumps(split))
  return str(manifest), str(split_file)


def test_fimad_converts_deterministically_and_reads_back(tmp_path):
  # Clip 1 (lunges, 16 s = 3 windows) misses its left wrist for 1 s inside window 1.
  manifest, split_file = make_fimad_source(tmp_path / "src", nan_gap=(1, 6.0, 1.0, 13))
  a = convert_fimad.build(manifest, split_file, str(tmp_path / "a"), workers=2,
                          records_per_shard=2, **QUIET)
  convert_fimad.build(manifest, split_file, str(tmp_path / "b"), workers=0,
                      records_per_shard=2, **QUIET)
  files = sorted(os.listdir(tmp_path / "a"))
  assert files == sorted(os.listdir(tmp_path / "b")) and "dataset_info.json" in files
  _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
  assert not mismatch and not errors, mismatch  # byte-identical, whatever the worker count

  assert a.counts["windows_dropped_pose_gap"] == 1 and a.counts["clips"] == 3
  report = json.load(open(tmp_path / "a" / conversion.REPORT_FILENAME))
  assert report["clips"] == {"yt001___1": {"windows_dropped": [1], "simulator_errors": []}}
  info = records.DatasetInfo.load(str(tmp_path / "a"))
  assert info.class_names == ("lunges", "pushups", "squats") and info.skeleton == "h36m17"
  assert {s: v.num_examples for s, v in info.splits.items()} == {"train": 2 + 2, "val": 2}

  ds = input_pipeline.make_dataset(str(tmp_path / "a"), "train", batch_size=4, shuffle=False,
                                   num_epochs=1, drop_remainder=False, process_index=0,
                                   process_count=1,
                                   augment_config=input_pipeline.AugmentConfig("all"))
  b = next(iter(ds))
  assert b["imu"].shape == (4, 16, 250, 6) and b["pose"].shape == (4, 125, 17, 3)
  assert b["video"].shape == (4, 8, 1536) and (b["modality_mask"] == 1).all()
  assert sorted(zip(b["clip_id"].tolist(), b["window_index"].tolist())) == [
      (b"yt000___0", 0), (b"yt000___0", 1), (b"yt001___1", 0), (b"yt001___1", 2)]
  assert np.isfinite(b["imu"].astype(np.float32)).all()
  acc = np.linalg.norm(b["imu"][..., :3].astype(np.float32), axis=-1)
  assert 9.0 < np.median(acc) < 10.6  # gravity dominates the specific force
  np.testing.assert_allclose(b["pose"][:, :, 0], 0, atol=1e-3)  # root-relative
  assert (b["pose"][:, :, 10, 2] > 0.3).mean() > 0.8  # head above the pelvis: z is up
  labels = dict(zip(b["clip_id"].tolist(), b["label"].tolist()))
  assert labels == {b"yt000___0": 2, b"yt001___1": 0}
  i = b["clip_id"].tolist().index(b"yt000___0")
  assert decode_text(b, i) == "squats. do it slowly"
  # Video step k of window w is feature 8w + k of the source (1.6 Hz = 8 steps per 5 s).
  video = np.load(tmp_path / "src" / "video" / "yt001___1.npy")
  j = [n for n in range(4) if b["clip_id"][n] == b"yt001___1" and b["window_index"][n] == 2][0]
  np.testing.assert_allclose(b["video"][j], video[16:24].astype(np.float16))
  # The pose is the source's, resampled: at 25 Hz it is every source frame of the window.
  pose = np.load(tmp_path / "src" / "pose" / "yt000___0.npy")[125:250]
  np.testing.assert_allclose(b["pose"][b["clip_id"].tolist().index(b"yt000___0") + 1],
                             pose - pose[:, :1], atol=2e-3)
  _, val = read_split(tmp_path / "a", "val")
  assert set(val["clip_id"].tolist()) == {b"yt002___2"}  # whole clips in their split


def test_fimad_up_flag(tmp_path):
  """A clip stored in camera-like coordinates (y down) with --up=0,-1,0 gives the records of
  the same clip stored with z up."""
  clips = (("squats", 6.0, "train"), ("situps", 6.0, "val"))
  manifest, split_file = make_fimad_source(tmp_path / "z", clips)
  manifest_y, _ = make_fimad_source(tmp_path / "y", clips)
  to_camera = np.linalg.inv(geometry.rotation_to_z_up((0, -1, 0)))
  for name in os.listdir(tmp_path / "y" / "pose"):
    path = tmp_path / "y" / "pose" / name
    np.save(path, np.load(path) @ to_camera.T)
  convert_fimad.build(manifest, split_file, str(tmp_path / "out_z"), workers=0, **QUIET)
  convert_fimad.build(manifest_y, split_file, str(tmp_path / "out_y"), workers=0,
                      up=(0, -1, 0), **QUIET)
  for split in ("train", "val"):
    _, z = read_split(tmp_path / "out_z", split)
    _, y = read_split(tmp_path / "out_y", split)
    for key in ("imu", "pose"):
      np.testing.assert_allclose(y[key].astype(np.float32), z[key].astype(np.float32), atol=0.02)


def test_fimad_bad_inputs_name_the_clip_and_file(tmp_path):
  manifest, split_file = make_fimad_source(tmp_path / "src")
  lines = [json.loads(line) for line in open(manifest)]

  def run(mutate, **kwargs):
    edited = [dict(line) for line in lines]
    mutate(edited)
    path = tmp_path / "src" / "edited.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in edited))
    return convert_fimad.build(str(path), split_file, str(tmp_path / "out"), workers=0,
                               **kwargs, **QUIET)

  with pytest.raises(conversion.ConversionError, match=r"yt001___1.*pose file .*nope\.npy"):
    run(lambda e: e[1].update(pose="pose/nope.npy"))
  with pytest.raises(conversion.ConversionError, match=r"yt000___0.*unknown skeleton 'coco'"):
    run(lambda e: e[0].update(skeleton="coco"))
  np.save(tmp_path / "src" / "pose" / "flat.npy", np.zeros((100, 17 * 3), np.float32))
  with pytest.raises(conversion.ConversionError,
                     match=r"yt002___2.*flat\.npy.*shape \(100, 51\), expected \[T >= 2, 17, 3\]"):
    run(lambda e: e[2].update(pose="pose/flat.npy"))
  with pytest.raises(conversion.ConversionError, match=r"1 clips .* not in the split file.*"
                                                       r"extra___9.*--skip_unsplit"):
    run(lambda e: e.append(dict(e[0], clip_id="extra___9")))
  report = run(lambda e: e.append(dict(e[0], clip_id="extra___9")), skip_unsplit=True)
  assert report.settings["clips_not_in_split_file"] == 1
  assert report.info.splits["train"].num_clips == 2
  assert not os.path.exists(tmp_path / "out" / "test-00000.tfrecord")  # no clip, no split


def test_fimad_failure_midway_leaves_no_dataset_info(tmp_path):
  manifest, split_file = make_fimad_source(tmp_path / "src")
  out = tmp_path / "out"
  convert_fimad.build(manifest, split_file, str(out), workers=0, **QUIET)
  assert os.path.exists(out / records.INFO_FILENAME)
  # The last clip converted (val) is broken: train's shards get written, then the run fails.
  np.save(tmp_path / "src" / "pose" / "yt002___2.npy", np.zeros((300, 16, 3), np.float32))
  with pytest.raises(conversion.ConversionError, match=r"yt002___2.*shape \(300, 16, 3\)"):
    convert_fimad.build(manifest, split_file, str(out), workers=2, records_per_shard=1, **QUIET)
  assert os.path.exists(out / "train-00000.tfrecord")
  assert not os.path.exists(out / records.INFO_FILENAME)
  assert not os.path.exists(out / conversion.REPORT_FILENAME)
  assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
  with pytest.raises(FileNotFoundError, match="not a complete"):
    records.DatasetInfo.load(str(out))


# ---------------------------------------------------------------------------------------------
# UTD-MHAD


@pytest.mark.skipif(not os.path.isdir(UTD_MHAD), reason=f"UTD-MHAD not found at {UTD_MHAD}")
def test_utd_mhad_subset_keeps_real_sensor_and_subjects(tmp_path):
  subjects, actions = (1, 2), (1, 22, 24)
  report = convert_utd_mhad.build(UTD_MHAD, str(tmp_path / "sim"), subjects=subjects,
                                  actions=actions, workers=0, **QUIET)
  assert report.counts["clips"] == 24
  info = records.DatasetInfo.load(str(tmp_path / "sim"))
  assert info.skeleton == "kinect_v1_20" and len(info.joint_names) == 20
  assert set(info.splits) == {"train", "test"}  # subject 1 -> train, 2 -> test
  trials = {t.name: t for t in utd_mhad.list_trials(UTD_MHAD)}
  tokenizer = text.load_tokenizer()
  for split, subject in (("train", 1), ("test", 2)):
    _, b = read_split(tmp_path / "sim", split)
    assert len(b["label"]) == 12
    for i, clip in enumerate(b["clip_id"].tolist()):
      trial = trials[clip.decode()]
      assert trial.subject == subject and trial.action in actions
      assert b["label"][i] == trial.action - 1
      assert tokenizer.decode(b["text_ids"][i, :b["text_len"][i]], skip_special_tokens=True) \
          == utd_mhad.ACTIONS[trial.action - 1]
      assert b["modality_mask"][i].tolist() == [1, 1, 0, 1]
      assert (b["imu_location_mask"][i] == 1).all()
      # The real sensor, centred: equal to the recording in SI units (float16 tolerance);
      # the padding is at rest (zero rotation, the edge's mean acceleration).
      real = utd_mhad.load_inertial(trial)
      loc = info.imu_locations.index(trial.sensor_location)
      got = b["imu"][i, loc].astype(np.float64)
      n = len(real)
      if n <= 250:
        start = (250 - n) // 2
        np.testing.assert_allclose(got[start:start + n], real, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(got[:start, 3:], 0.0)
        np.testing.assert_allclose(got[start + n:, :3], np.broadcast_to(
            real[-5:, :3].mean(0), (250 - start - n, 3)), rtol=2e-3, atol=2e-3)
      else:
        start = (n - 250) // 2
        np.testing.assert_allclose(got, real[start:start + 250], rtol=2e-3, atol=2e-3)
      # Simulated sensors of the standing subject read gravity; the pose is root-relative, z up.
      sim = np.linalg.norm(b["imu"][i, info.imu_locations.index("chest"), :, :3].astype(float),
                           axis=-1)
      assert 8.0 < np.median(sim) < 11.5
      np.testing.assert_allclose(b["pose"][i, :, 3], 0.0, atol=1e-3)  # hip_center
      assert np.median(b["pose"][i, :, 0, 2].astype(float)) > 0.3  # head above the hips
  # Real sensor only: simulated locations zero, mask 0.
  convert_utd_mhad.build(UTD_MHAD, str(tmp_path / "real"), subjects=(1,), actions=(22,),
                         simulated_locations=False, workers=0, **QUIET)
  _, b = read_split(tmp_path / "real", "train")
  loc = info.imu_locations.index("right_thigh")
  assert (b["imu_location_mask"] == np.eye(16, dtype=int)[loc]).all()
  assert not np.delete(b["imu"], loc, axis=1).any() and b["imu"][:, loc].any()


@pytest.mark.skipif(not os.path.isdir(UTD_MHAD), reason=f"UTD-MHAD not found at {UTD_MHAD}")
def test_utd_mhad_pose_on_h36m17(tmp_path):
  kw = dict(subjects=(1,), actions=(1, 22), workers=0, **QUIET)
  convert_utd_mhad.build(UTD_MHAD, str(tmp_path / "kinect"), **kw)
  convert_utd_mhad.build(UTD_MHAD, str(tmp_path / "h36m"), pose_skeleton="h36m17", **kw)
  info = records.DatasetInfo.load(str(tmp_path / "h36m"))
  assert info.skeleton == "h36m17" and info.joint_names == skeletons.H36M17.joint_names
  _, kinect = read_split(tmp_path / "kinect", "train")
  _, h36m = read_split(tmp_path / "h36m", "train")
  np.testing.assert_array_equal(h36m["imu"], kinect["imu"])  # same sensors, only pose mapped
  k = lambda name: kinect["pose"][:, :, skeletons.KINECT_V1_20.index(name)].astype(float)
  h = lambda name: h36m["pose"][:, :, skeletons.H36M17.index(name)].astype(float)
  for ours, theirs in convert_utd_mhad.KINECT_TO_H36M17.items():
    np.testing.assert_allclose(h(ours), k(theirs), atol=2e-3)
  # The head top: half a neck length above Kinect's head centre, along shoulder_center -> head.
  np.testing.assert_allclose(h("head"), k("head") + 0.5 * (k("head") - k("shoulder_center")),
                             atol=3e-3)
  assert (h("head")[..., 2] > h("neck")[..., 2]).mean() > 0.95
  with pytest.raises(ValueError, match="pose_skeleton 'smpl'"):
    convert_utd_mhad.build(UTD_MHAD, str(tmp_path / "x"), pose_skeleton="smpl", **kw)


@pytest.mark.skipif(not os.path.isdir(UTD_MHAD), reason=f"UTD-MHAD not found at {UTD_MHAD}")
def test_utd_mhad_text_from_motion_reads_no_action_description(tmp_path):
  kw = dict(subjects=(1,), actions=(1, 22), workers=0, pose_skeleton="h36m17", **QUIET)
  convert_utd_mhad.build(UTD_MHAD, str(tmp_path / "m"), text_source="motion", text_len=32, **kw)
  info, b = read_split(tmp_path / "m", "train")
  tokenizer = text.load_tokenizer()
  captions = [tokenizer.decode(ids[:n], skip_special_tokens=True)
              for ids, n in zip(b["text_ids"], b["text_len"])]
  assert info.text_len == 32 and "motion_text" in info.source and len(captions) == 8
  descriptions = {d.lower() for d in utd_mhad.ACTIONS}
  assert not descriptions & set(captions) and len(set(captions)) > 1
  with pytest.raises(ValueError, match="text_source 'labels' is not one of"):
    convert_utd_mhad.build(UTD_MHAD, str(tmp_path / "x"), text_source="labels", **kw)
  with pytest.raises(ValueError, match="trial_steps keeps whole trials"):
    convert_utd_mhad.build(UTD_MHAD, str(tmp_path / "x"), text_source="motion", trial_steps=50,
                           subjects=(1,), actions=(1,), workers=0, **QUIET)


def test_utd_mhad_splits_flag():
  assert convert_utd_mhad.parse_splits("train:1,3,5;val:7;test:2,4,6,8") == \
      {k: tuple(v) for k, v in utd_mhad.SUBJECT_SPLITS.items()}
  with pytest.raises(ValueError, match="subject 3 in both"):
    convert_utd_mhad.parse_splits("train:1,3;test:3")


# ---------------------------------------------------------------------------------------------
# MM-Fit


T0_MS = 1_562_790_000_000.0


def watch_signal(t):
  """A slow, known watch signal (acc m/s^2, gyr rad/s) at true times t (s)."""
  tilt = 0.3 * np.sin(2 * np.pi * 0.1 * t)
  acc = np.stack([9.81 * np.sin(tilt), 0.5 * np.sin(2 * np.pi * 0.3 * t),
                  9.81 * np.cos(tilt)], axis=-1)
  gyr = np.stack([0.2 * np.sin(2 * np.pi * 0.25 * t), np.full_like(t, 0.1),
                  -0.3 * np.cos(2 * np.pi * 0.15 * t)], axis=-1)
  return acc, gyr


def write_mmfit_workout(root, workout, rng, n_frames=2100, devices=("sw_l", "sw_r"),
                        acc_in_g=("sw_r",), body=None, watch=watch_signal):
  """A workout in MM-Fit's layout whose camera slows down (45 ms frames) for 300 frames.

  Labels: the real file when available (the workout starts 213 frames before its first set),
  else two synthetic sets. Returns (first frame, true frame times s, true time of the first
  watch sample, the motion at 100 Hz, the sets). body: the motion [T, 17, 3] at 100 Hz (default
  squats); watch(t) -> (acc, gyr) of the watches at true times t.
  """
  folder = root / workout
  os.makedirs(folder)
  real_labels = os.path.join(MMFIT_LABELS, workout, f"{workout}_labels.csv")
  if os.path.exists(real_labels):
    shutil.copy(real_labels, folder)
    first = int(open(real_labels).readline().split(",")[0]) - 213
  else:
    first = 1000
    (folder / f"{workout}_labels.csv").write_text(
        f"{first + 213},{first + 698},10,squats\n{first + 1310},{first + 1837},10,bicep_curls\n")
  dt = np.full(n_frames - 1, 1 / 30)
  dt[600:900] = 0.045
  t_frames = np.concatenate([[0.0], np.cumsum(dt)])
  frames = first + np.arange(n_frames)
  if body is None:
    body = motion.synthesize("squats", t_frames[-1] + 0.5, 100.0, rng, joint_noise_m=0.0)
  t100 = np.arange(len(body)) / 100.0
  joints = np.stack([[np.interp(t_frames, t100, body[:, j, c]) for c in range(3)]
                     for j in range(17)], axis=0)                       # [17, 3, N]
  pose = np.concatenate([np.broadcast_to(frames, (3, 1, n_frames)),
                         np.transpose(joints, (1, 0, 2)) * 1000.0], axis=1)  # mm
  np.save(folder / f"{workout}_pose_3d.npy", np.transpose(pose, (0, 2, 1)))  # (3, N, 18)
  t_samples = np.arange(0.003, t_frames[-1], 0.01)                         # 100 Hz
  frame_of_sample = frames[np.searchsorted(t_frames, t_samples, side="right") - 1]
  acc, gyr = watch(t_samples)
  for device in devices:
    for kind, values in (("acc", acc / 9.80665 if device in acc_in_g else acc), ("gyr", gyr)):
      np.save(folder / f"{workout}_{device}_{kind}.npy",
              np.column_stack([frame_of_sample, T0_MS + t_samples * 1000, values]))
  sets = [(int(r[0]), int(r[1]), r[3].strip()) for r in
          (line.split(",") for line in open(folder / f"{workout}_labels.csv"))]
  return first, t_frames, t_samples[0], body, sets


def test_mmfit_windows_labels_splits_units(tmp_path):
  rng = np.random.default_rng(1)
  src = tmp_path / "mm-fit"
  w01 = write_mmfit_workout(src, "w01", rng)
  w14 = write_mmfit_workout(src, "w14", rng, n_frames=1000, devices=("sw_l",))
  report = convert_mmfit.build(str(src), str(tmp_path / "out"), workers=0, **QUIET)
  info = records.DatasetInfo.load(str(tmp_path / "out"))
  assert set(info.splits) == {"train", "val"} and info.class_names == motion.EXERCISES
  assert info.splits["train"].num_clips == 1 and info.splits["val"].num_clips == 1
  assert report.clips["w01"]["pose_units"] == "mm"
  assert report.clips["w01"]["acc_units"] == {"sw_l": "m/s^2", "sw_r": "g"}
  assert report.clips["w14"]["devices_missing"] == ["sw_r"]
  assert "gyr_magnitude_r_real_vs_simulated" in report.clips["w01"]

  for split, (first, t_frames, t0, body, sets) in (("train", w01), ("val", w14)):
    _, b = read_split(tmp_path / "out", split)
    assert len(b["label"]) >= 3
    # Windows are consecutive 5 s from the first frame; labels from the csv in true time.
    # Our axis starts at the first watch sample (true time t0); sets span [start, end + 1).
    set_times = [(t_frames[s - first] - t0 if s - first < len(t_frames) else np.inf,
                  t_frames[e + 1 - first] - t0 if e + 1 - first < len(t_frames) else np.inf,
                  name) for s, e, name in sets if e + 1 - first > 0]
    expected = {}
    for w in range(int(t_frames[-1] // 5.0) + 1):
      a, z = 5.0 * w, 5.0 * (w + 1)
      inside = [n for s, e, n in set_times if s <= a and z <= e]
      touching = [n for s, e, n in set_times if s < z and a < e]
      if inside:
        expected[w] = motion.EXERCISES.index(mmfit.EXERCISE_NAMES.get(inside[0],
                                                                               inside[0]))
      elif not touching:
        expected[w] = -1
    got = dict(zip(b["window_index"].tolist(), b["label"].tolist()))
    full = {w for w in expected if 5.0 * (w + 1) + 0.1 < t_frames[-1] - t0}
    assert full <= set(got) <= set(expected)
    assert all(got[w] == expected[w] for w in got)
    assert any(v >= 0 for v in got.values()) and any(v < 0 for v in got.values())
    for i, w in enumerate(b["window_index"]):
      # The real watches, on the sensor clock, in SI units at their wrists (mask 1).
      t_true = t0 + 5.0 * w + np.arange(250) / 50.0
      acc, gyr = watch_signal(t_true)
      for device, location in convert_mmfit.DEVICES.items():
        if split == "val" and device == "sw_r":
          continue
        got_imu = b["imu"][i, info.imu_locations.index(location)].astype(np.float64)
        np.testing.assert_allclose(got_imu[:, :3], acc, atol=0.03)
        np.testing.assert_allclose(got_imu[:, 3:], gyr, atol=0.01)
      assert (b["imu_location_mask"][i] == 1).all()
      assert (b["text_len"][i] > 0) == (b["label"][i] >= 0)
      # The pose in metres at the right time despite the camera's uneven frame rate.
      t_pose = t0 + 5.0 * w + np.arange(125) / 25.0
      truth = np.stack([[np.interp(t_pose, np.arange(len(body)) / 100.0, body[:, j, c])
                         for c in range(3)] for j in range(17)], axis=0).transpose(2, 0, 1)
      np.testing.assert_allclose(b["pose"][i].astype(np.float64), truth - truth[:, :1],
                                 atol=0.015)


def test_mmfit_handedness_check_flags_a_mirrored_joint_order(tmp_path):
  """The left watch reads the left wrist of a body whose right arm is still: the report's
  |gyr| correlations find the left wrist, and warn when the joint order mirrors the pose."""
  rng = np.random.default_rng(3)
  body = motion.synthesize("lateral_shoulder_raises", 25.0, 100.0, rng, joint_noise_m=0.0)
  skel = skeletons.H36M17
  shoulder = skel.index("right_shoulder")
  for joint in ("right_elbow", "right_wrist"):
    j = skel.index(joint)
    body[:, j] = body[:, shoulder] + (body[0, j] - body[0, shoulder])
  left = virtual_imu.simulate_imu(body, fps=100.0, locations=["left_wrist"], rate_hz=100.0)[0]
  t100 = np.arange(len(body)) / 100.0

  def watch(t):
    values = np.stack([np.interp(t, t100, v) for v in left.T], axis=1)
    return values[:, :3], values[:, 3:]

  write_mmfit_workout(tmp_path / "src", "w01", rng, n_frames=600, devices=("sw_l",),
                      body=body, watch=watch)
  for order, mirrored in (("h36m", False), ("eda", True)):
    report = convert_mmfit.build(str(tmp_path / "src"), str(tmp_path / order), workers=0,
                                 devices=(("sw_l", "left_wrist"),), pose_joint_order=order,
                                 **QUIET)
    r = report.clips["w01"]["gyr_magnitude_r_real_vs_simulated"]["sw_l"]
    assert ("warning" in report.clips["w01"]) == mirrored, r
    assert (r["right_wrist"] if mirrored else r["left_wrist"]) > 0.8, r


def test_mmfit_bad_units_and_layout_stop_with_the_file(tmp_path):
  rng = np.random.default_rng(2)
  src = tmp_path / "mm-fit"
  write_mmfit_workout(src, "w01", rng, n_frames=400)
  gyr_path = src / "w01" / "w01_sw_l_gyr.npy"
  gyr = np.load(gyr_path)
  np.save(gyr_path, np.column_stack([gyr[:, :2], np.degrees(gyr[:, 2:]) * 50]))
  with pytest.raises(conversion.ConversionError, match=r"w01.*w01_sw_l_gyr\.npy.*deg/s"):
    convert_mmfit.build(str(src), str(tmp_path / "out"), workers=0, **QUIET)
  pose_path = src / "w01" / "w01_pose_3d.npy"
  np.save(pose_path, np.load(pose_path)[:, :, :17])
  with pytest.raises(conversion.ConversionError, match=r"w01.*w01_pose_3d\.npy.*\(3, 400, 17\)"):
    convert_mmfit.build(str(src), str(tmp_path / "out"), workers=0, **QUIET)
  os.makedirs(src / "w99")
  with pytest.raises(conversion.ConversionError, match=r"\['w99'\] are in no split"):
    convert_mmfit.build(str(src), str(tmp_path / "out"), workers=0, **QUIET)
  assert not os.path.exists(tmp_path / "out" / records.INFO_FILENAME)


def test_mmfit_eda_joint_order_is_the_mirror_of_h36m():
  skel = skeletons.H36M17
  assert mmfit.EDA_ORDER[1] == "left_hip" and mmfit.EDA_ORDER[11] == \
      "right_shoulder" and mmfit.EDA_ORDER[0] == "pelvis"
  assert sorted(mmfit.EDA_ORDER) == sorted(skel.joint_names)
  assert set(virtual_imu.SENSOR_LOCATIONS) >= set(convert_mmfit.DEVICES.values())
