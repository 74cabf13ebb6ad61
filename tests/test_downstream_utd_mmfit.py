"""UTD-MHAD and MM-Fit downstream adapters: UTD-MHAD on the real data (and small .mat files),
MM-Fit on workouts written in its official layout (real label files where they help)."""

import os
import shutil

import numpy as np
import pytest
import scipy.io

from mujo_jax.downstream import datasets
from mujo_jax.downstream import mmfit
from mujo_jax.downstream import utd_mhad
from mujo_jax.sources import mmfit as mmfit_files
from mujo_jax.sources import utd_mhad as utd_files

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
UTD_MHAD = os.path.join(SHARED, "utd_mhad")
MMFIT_LABELS = os.path.join(SHARED, "mmfit_labels")
needs_utd = pytest.mark.skipif(not os.path.isdir(UTD_MHAD),
                               reason=f"real UTD-MHAD not found at {UTD_MHAD}")
needs_mmfit_labels = pytest.mark.skipif(not os.path.isdir(MMFIT_LABELS),
                                        reason=f"real MM-Fit labels not found at {MMFIT_LABELS}")

# -- UTD-MHAD ------------------------------------------------------------------------------------


@needs_utd
def test_utd_real_trials_become_recordings_in_si_units():
  rec = utd_mhad.load(UTD_MHAD, subjects=(1, 2))
  trials = [t for t in utd_files.list_trials(UTD_MHAD) if t.subject in (1, 2)]
  assert len(trials) > 200 and {t.action for t in trials} == set(range(1, 28))
  assert len(np.unique(rec.recording)) == len(trials)
  assert rec.class_names == utd_mhad.CLASS_NAMES and len(rec.class_names) == 27
  assert rec.channel_names == ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
  assert (rec.sample_rate_hz, rec.acc_unit, rec.gyr_unit) == (50.0, "m/s^2", "rad/s")
  assert rec.splits == {"train": (1,), "test": (2,)}
  start = 0
  for trial in trials:   # in list_trials order, each trial's samples as load_inertial reads them
    expected = utd_files.load_inertial(trial)
    rows = slice(start, start + len(expected))
    np.testing.assert_array_equal(rec.x[rows], expected.astype(np.float32))
    assert (rec.y[rows] == trial.action - 1).all()
    assert (rec.subject[rows] == trial.subject).all()
    assert (rec.recording[rows] == utd_mhad.trial_id(trial)).all()
    start += len(expected)
  assert start == len(rec.x)
  assert utd_mhad.trial_id(trials[-1]) == trials[-1].action * 10000 + 2 * 100 + trials[-1].trial
  # At rest at the start of a trial the accelerometer reads ~1 g in m/s^2.
  first = [rec.x[rec.recording == r][:10, :3] for r in np.unique(rec.recording)]
  assert np.median([np.linalg.norm(f, axis=1).mean() for f in first]) == pytest.approx(9.81,
                                                                                        rel=0.15)
  assert any("thigh" in n for n in rec.notes) and "thigh" in rec.sensor


@needs_utd
def test_utd_sensor_option_keeps_one_position_and_reindexes():
  thigh = utd_mhad.load(UTD_MHAD, sensor="thigh", subjects=(2,))
  assert thigh.class_names == ("jog", "walk", "sit to stand", "stand to sit", "lunge", "squat")
  assert set(np.unique(thigh.y).tolist()) == set(range(6))
  assert thigh.sensor == "right thigh" and thigh.splits is None   # no train subject among [2]
  assert any("splits=None" in n for n in thigh.notes)
  wrist = utd_mhad.load(UTD_MHAD, sensor="wrist", subjects=(2,))
  assert len(wrist.class_names) == 21 and set(np.unique(wrist.y).tolist()) == set(range(21))
  everything = utd_mhad.load(UTD_MHAD, subjects=(2,))
  assert len(everything.x) == len(wrist.x) + len(thigh.x)
  assert (np.unique(thigh.recording) // 10000 >= 22).all()


def write_utd_trial(root, action, subject, trial, inertial):
  for folder, key, value in (("Inertial", "d_iner", inertial),
                             ("Skeleton", "d_skel", np.zeros((20, 3, 10)))):
    os.makedirs(root / folder, exist_ok=True)
    kind = folder.lower()
    scipy.io.savemat(root / folder / f"a{action}_s{subject}_t{trial}_{kind}.mat", {key: value})


def test_utd_small_files_units_splits_and_bad_input(tmp_path):
  root = tmp_path / "utd"
  raw = np.tile([[0.0, 0.0, 1.0, 90.0, 0.0, -180.0]], (7, 1))   # g and deg/s as stored
  write_utd_trial(root, 1, 1, 1, raw)
  write_utd_trial(root, 27, 4, 2, raw[:5])
  rec = utd_mhad.load(str(root))
  np.testing.assert_allclose(rec.x[0], [0, 0, 9.80665, np.pi / 2, 0, -np.pi], rtol=1e-6)
  assert rec.y.tolist() == [0] * 7 + [26] * 5 and rec.subject.tolist() == [1] * 7 + [4] * 5
  assert rec.recording.tolist() == [10101] * 7 + [270402] * 5
  assert rec.splits == {"train": (1,), "test": (4,)}
  assert datasets.load("utd_mhad", str(root), sensor="thigh").y.tolist() == [5] * 5

  with pytest.raises(ValueError, match="sensor='ankle'"):
    utd_mhad.load(str(root), sensor="ankle")
  with pytest.raises(ValueError, match=r"subjects=\[9\].*subject\(s\) \[9\]"):
    utd_mhad.load(str(root), subjects=[9])
  with pytest.raises(FileNotFoundError, match="nowhere"):
    utd_mhad.load(str(tmp_path / "nowhere"))
  shutil.rmtree(root / "Skeleton")
  with pytest.raises(FileNotFoundError, match="Skeleton"):
    utd_mhad.load(str(root))
  write_utd_trial(root, 1, 1, 1, raw)
  write_utd_trial(root, 2, 1, 1, raw[:, :5])
  with pytest.raises(ValueError, match=r"a2_s1_t1_inertial\.mat.*\(7, 5\)"):
    utd_mhad.load(str(root))


def test_utd_prompts_use_the_action_descriptions():
  prompts = datasets.class_prompts("utd_mhad", ["swipe left", "catch", "squat", "yodel"])
  assert prompts == ["a person doing right arm swipe to the left",
                     "a person doing right hand catch an object",
                     "a person doing squat (two arms stretch out)", "a person doing yodel"]
  assert len(set(utd_mhad.class_prompts(utd_mhad.CLASS_NAMES))) == 27


# -- MM-Fit --------------------------------------------------------------------------------------

T0_MS = 1_562_790_000_000.0    # epoch milliseconds, like the real files
G = 9.80665


def camera_times(n_frames):
  """True frame times (s): 30 fps, but the camera slows to 45 ms frames for frames 600-900, so
  a frame number is not a clock (a linear frame -> time map is 3.5 s off after frame 900)."""
  dt = np.full(n_frames - 1, 1 / 30)
  dt[600:900] = 0.045
  return np.concatenate([[0.0], np.cumsum(dt)])


def watch(t, device):
  """Known signals, linear in true time t (s) so that interpolation reproduces them exactly;
  the right watch differs from the left (acc_y, gyr_z)."""
  right = device == "sw_r"
  acc = np.stack([0.01 * t, np.full_like(t, 2.0 if right else 1.0), np.full_like(t, 9.7)], 1)
  gyr = np.stack([0.02 * t, np.full_like(t, -0.2), np.full_like(t, 0.5 if right else 0.3)], 1)
  return acc, gyr


def write_workout(root, workout, rng, n_frames=600, labels=None, first_frame=1000,
                  devices=("sw_l", "sw_r"), acc_in_g=(), rate_hz=100.0, gap_s=None):
  """A workout in MM-Fit's layout: sensor rows (frame, timestamp ms, xyz) with timestamps
  jittered by +-2 ms, gyr sampled 4 ms after acc, each row carrying the camera frame it falls
  in. labels: csv text (default: none). gap_s: (start, end) true times with no acc samples.
  Returns (true frame times s, true time of the first device's grid start s: its later first
  sample of acc and gyr)."""
  folder = root / workout
  os.makedirs(folder, exist_ok=True)
  (folder / f"{workout}_labels.csv").write_text(labels or "")
  t_frames = camera_times(n_frames)
  frames = first_frame + np.arange(n_frames)
  starts = {}
  for device in devices:
    for kind, offset in (("acc", 0.003), ("gyr", 0.007)):
      t = np.arange(offset, t_frames[-1], 1 / rate_hz) + rng.uniform(-0.002, 0.002)
      t = np.sort(t + rng.uniform(-0.002, 0.002, len(t)))
      if gap_s is not None and kind == "acc":
        t = t[(t < gap_s[0]) | (t > gap_s[1])]
      acc, gyr = watch(t, device)
      values = (acc / G if device in acc_in_g else acc) if kind == "acc" else gyr
      frame = frames[np.searchsorted(t_frames, t, side="right") - 1]
      np.save(folder / f"{workout}_{device}_{kind}.npy",
              np.column_stack([frame, T0_MS + t * 1000, values]))
      starts[device] = max(starts.get(device, -np.inf), t[0])
  return t_frames, starts[devices[0]]


def grid_times(rec, workout_number, t_start):
  """True times (s) of a single-recording workout's samples."""
  return t_start + np.arange(np.count_nonzero(rec.subject == workout_number)) / 100.0


def test_mmfit_labels_follow_the_frame_clock_and_values_the_timestamps(tmp_path):
  rng = np.random.default_rng(0)
  # Set 1 before the camera slows, set 2 after it (MM-Fit's "bicep_curls" is our
  # "dumbbell_biceps_curls"); frames from 1000.
  t_frames, t_start = write_workout(tmp_path, "w01", rng, n_frames=2100,
                                    labels="1213,1698,10,squats\n2310,2837,10,bicep_curls\n")
  rec = mmfit.load(str(tmp_path), workouts=["w01"])
  assert rec.class_names == mmfit_files.CLASS_NAMES and len(rec.class_names) == 10
  assert (rec.sample_rate_hz, rec.acc_unit, rec.gyr_unit) == (100.0, "m/s^2", "rad/s")
  assert set(rec.subject.tolist()) == {1} and set(rec.recording.tolist()) == {0}
  assert rec.splits is None and "left wrist" in rec.sensor
  t = grid_times(rec, 1, t_start)
  acc, gyr = watch(t, "sw_l")
  np.testing.assert_allclose(rec.x, np.concatenate([acc, gyr], 1), atol=1e-5)
  assert t[-1] > t_frames[-1] - 0.05   # the grid covers the recording

  squats = rec.class_names.index("squats")
  curls = rec.class_names.index("dumbbell_biceps_curls")
  spans = [(t_frames[213], t_frames[699], squats), (t_frames[1310], t_frames[1838], curls)]
  expected = np.full(len(t), -1)
  for start, end, label in spans:
    expected[(t >= start) & (t < end)] = label
  boundary = np.min(np.abs(t[:, None] - np.array([s[:2] for s in spans]).ravel()), axis=1)
  far = boundary > 0.02   # the frame clock is exact to about half a sample interval
  assert far.sum() > 0.99 * len(t)
  np.testing.assert_array_equal(rec.y[far], expected[far])
  # Each set starts within 20 ms of its true start (a linear frame clock would be 3.5 s late
  # for the second one).
  for start, _, label in spans:
    first = t[np.argmax(rec.y == label)]
    assert abs(first - start) < 0.02, (label, first, start)
  assert (rec.y == -1).sum() > 0.3 * len(t)


@needs_mmfit_labels
def test_mmfit_real_label_file_through_labels_dir(tmp_path):
  rng = np.random.default_rng(1)
  sets = mmfit_files.read_labels(os.path.join(MMFIT_LABELS, "w09", "w09_labels.csv"))
  first_set = sets[0]
  assert first_set.exercise == "squats" and len(sets) > 20
  t_frames, t_start = write_workout(tmp_path / "mm-fit", "w09", rng, n_frames=1200,
                                    first_frame=first_set.start_frame - 300, devices=("sw_r",))
  os.remove(tmp_path / "mm-fit" / "w09" / "w09_labels.csv")
  with pytest.raises(FileNotFoundError, match=r"w09_labels\.csv"):
    mmfit.load(str(tmp_path / "mm-fit"), device="sw_r", workouts=["w09"], test_split="test")
  rec = mmfit.load(str(tmp_path / "mm-fit"), device="sw_r", workouts=["w09"], test_split="test",
                   labels_dir=MMFIT_LABELS)
  t = grid_times(rec, 9, t_start)
  start = t_frames[300]
  end = t_frames[first_set.end_frame + 1 - first_set.start_frame + 300]
  squats = rec.class_names.index("squats")
  assert (rec.y[t < start - 0.02] == -1).all()
  assert (rec.y[(t > start + 0.02) & (t < end - 0.02)] == squats).all()
  next_frame = sets[1].start_frame - first_set.start_frame + 300
  next_start = t_frames[next_frame] if next_frame < len(t_frames) else np.inf
  after = (t > end + 0.02) & (t < next_start - 0.02)
  assert after.sum() > 100 and (rec.y[after] == -1).all()
  np.testing.assert_allclose(rec.x[:, 1], 2.0, atol=1e-5)   # the right watch


def test_mmfit_splits_test_split_option_and_missing_workouts(tmp_path):
  rng = np.random.default_rng(2)
  for workout in ("w00", "w01", "w09", "w14"):
    write_workout(tmp_path, workout, rng, n_frames=150, labels="1050,1100,10,situps\n")
  rec = mmfit.load(str(tmp_path), workouts=["w00", "w01", "w14"])
  assert rec.splits == {"train": (1,), "val": (14,), "test": (0,)}
  assert sorted(set(rec.subject.tolist())) == [0, 1, 14]
  assert set(rec.y.tolist()) == {-1, rec.class_names.index("situps")}
  with pytest.raises(ValueError, match=r"\['w09'\] not in the train, val or unseen_test"):
    mmfit.load(str(tmp_path), workouts=["w01", "w09"])
  # Default: every official workout is requested; the first missing file is named.
  with pytest.raises(FileNotFoundError, match=r"w02/w02_sw_l_acc\.npy.*skip_missing"):
    mmfit.load(str(tmp_path))
  rec = mmfit.load(str(tmp_path), skip_missing=True)
  assert rec.splits == {"train": (1,), "val": (14,), "test": (0,)}
  assert any("w02: w02_sw_l_acc.npy, w02_sw_l_gyr.npy, w02_labels.csv" in n for n in rec.notes)
  rec = datasets.load("mmfit", str(tmp_path), skip_missing=True, test_split="test")
  assert rec.splits == {"train": (1,), "val": (14,), "test": (9,)}
  assert 0 not in rec.subject   # the other test set is not read
  rec = mmfit.load(str(tmp_path), skip_missing=True, test_split="both")
  assert rec.splits == {"train": (1,), "val": (14,), "test": (0, 9)}
  assert sorted(set(rec.recording.tolist())) == [0, 1, 2, 3]


def test_mmfit_device_units_and_gaps(tmp_path):
  rng = np.random.default_rng(3)
  write_workout(tmp_path, "w01", rng, acc_in_g=("sw_r",), gap_s=(8.0, 9.0))
  write_workout(tmp_path, "w14", rng, devices=("sw_r", "sw_l"))
  right = mmfit.load(str(tmp_path), device="sw_r", workouts=["w01"])
  assert right.acc_unit == "g" and "right wrist" in right.sensor   # as stored, not converted
  np.testing.assert_allclose(right.x[:, 1], 2.0 / G, atol=1e-5)
  np.testing.assert_allclose(right.x[:, 5], 0.5, atol=1e-6)
  # w01 in g, w14 in m/s^2: one unit per dataset, so w01 is scaled and a note says so.
  mixed = mmfit.load(str(tmp_path), device="sw_r", workouts=["w01", "w14"])
  assert mixed.acc_unit == "m/s^2" and any("disagree" in n for n in mixed.notes)
  np.testing.assert_allclose(mixed.x[:, 1], 2.0, atol=1e-5)
  # The left watch of w01 lost 1 s of acc samples: two recordings, no sample in the gap.
  left = mmfit.load(str(tmp_path), workouts=["w01"])
  assert set(left.recording.tolist()) == {0, 1} and set(left.subject.tolist()) == {1}
  t = left.x[:, 0] / 0.01       # acc_x = 0.01 * true time
  assert not ((t > 8.0 + 0.01) & (t < 9.0 - 0.01)).any()
  assert t[left.recording == 0].max() < 8.0 < 9.0 < t[left.recording == 1].min()
  np.testing.assert_allclose(left.x[:, 1], 1.0, atol=1e-5)
  assert any("1 gap(s) longer than 0.3 s" in n for n in left.notes)


def test_mmfit_bad_input_names_the_file_or_key(tmp_path):
  rng = np.random.default_rng(4)
  write_workout(tmp_path, "w01", rng, n_frames=300)
  load = lambda **kw: mmfit.load(str(tmp_path), workouts=["w01"], **kw)   # noqa: E731
  for key, value in (("device", "sw_x"), ("test_split", "unseen"), ("gyr_unit", "rpm")):
    with pytest.raises(ValueError, match=f"{key}='{value}'"):
      load(**{key: value})
  with pytest.raises(FileNotFoundError, match="nowhere"):
    mmfit.load(str(tmp_path / "nowhere"))
  folder = tmp_path / "w01"
  acc_path, gyr_path = folder / "w01_sw_l_acc.npy", folder / "w01_sw_l_gyr.npy"
  acc, gyr = np.load(acc_path), np.load(gyr_path)

  np.save(acc_path, acc[:, :4])
  with pytest.raises(ValueError, match=r"w01_sw_l_acc\.npy.*shape \(\d+, 4\)"):
    load()
  np.save(acc_path, acc[::2])   # 50 Hz
  with pytest.raises(ValueError, match=r"w01_sw_l_acc\.npy: median sample rate 50\.\d Hz"):
    load()
  np.save(acc_path, np.column_stack([acc[:, :2], acc[:, 2:] * 3]))   # neither m/s^2 nor g
  with pytest.raises(ValueError, match=r"w01_sw_l_acc\.npy.*median \|acc\|"):
    load()
  np.save(acc_path, acc)
  np.save(gyr_path, np.column_stack([gyr[:, :2], np.degrees(gyr[:, 2:]) * 10]))
  with pytest.raises(ValueError, match=r"w01_sw_l_gyr\.npy.*deg/s data\?.*gyr_unit="):
    load()
  assert load(gyr_unit="deg/s").gyr_unit == "deg/s"
  np.save(gyr_path, gyr)
  (folder / "w01_labels.csv").write_text("1050,1100,10,squats\n1200,1250,10,yoga\n")
  with pytest.raises(ValueError, match=r"w01_labels\.csv line 2: unknown exercise 'yoga'"):
    load()
  os.remove(gyr_path)
  with pytest.raises(FileNotFoundError, match=r"w01_sw_l_gyr\.npy: not found"):
    load()


def test_mmfit_regular_100hz_samples_come_back_unchanged(tmp_path):
  """Timestamps exactly on a 100 Hz grid, shared by acc and gyr: no value is interpolated."""
  rng = np.random.default_rng(5)
  folder = tmp_path / "w01"
  os.makedirs(folder)
  (folder / "w01_labels.csv").write_text("1010,1020,10,pushups\n")
  n = 900
  t_ms = T0_MS + 10.0 * np.arange(n)
  frame = 1000 + (np.arange(n) // 3)
  stored = {"acc": rng.normal([0, 0, 9.8], 0.5, (n, 3)), "gyr": rng.normal(0, 1.0, (n, 3))}
  for kind, values in stored.items():
    np.save(folder / f"w01_sw_l_{kind}.npy", np.column_stack([frame, t_ms, values]))
  rec = mmfit.load(str(tmp_path), workouts=["w01"])
  np.testing.assert_allclose(rec.x, np.concatenate([stored["acc"], stored["gyr"]], 1).astype(
      np.float32), rtol=1e-6, atol=1e-6)
  # Frames 1010-1020 hold samples 30-62; the clock puts a frame 5 ms before its first sample.
  assert np.flatnonzero(rec.y >= 0).tolist() == list(range(30, 63))
  assert rec.class_names[rec.y[30]] == "pushups"
