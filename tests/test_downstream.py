"""Downstream evaluation: generic format, windowing, protocol, and a small end-to-end run."""

import json
import os

import numpy as np
import pytest

from configs import finetune as finetune_config
from mujo_jax import checkpoint
from mujo_jax.downstream import finetune
from mujo_jax.downstream import protocol
from mujo_jax.downstream import windows
from mujo_jax.sources import recording as recording_lib
from mujo_jax.sources import resampling
from mujo_jax import units

CHANNELS = recording_lib.ACC_CHANNELS + recording_lib.GYR_CHANNELS


def make_recordings(subjects=(1, 2, 3, 4, 5, 6), classes=3, seconds=12.0, rate=100.0,
                    **overrides):
  """Per subject and class two recordings of a sine whose frequency gives the class."""
  rng = np.random.default_rng(0)
  x, y, subject, recording = [], [], [], []
  n = int(seconds * rate)
  t = np.arange(n) / rate
  for s in subjects:
    for c in range(classes):
      for _ in range(2):
        f = 1.0 + 1.2 * c
        acc = np.stack([0.4 * np.sin(2 * np.pi * f * t), 0.2 * np.cos(2 * np.pi * f * t),
                        np.ones(n)], 1)
        gyr = 60 * np.stack([np.sin(2 * np.pi * f * t)] * 3, 1)
        x.append(np.concatenate([acc, gyr], 1) + rng.normal(0, 0.05, (n, 6)))
        labels = np.full(n, c)
        labels[:int(rate)] = -1           # one unlabelled second at the start
        y.append(labels)
        subject.append(np.full(n, s))
        recording.append(np.full(n, len(recording)))
  fields = dict(x=np.concatenate(x).astype(np.float32), y=np.concatenate(y).astype(np.int32),
                subject=np.concatenate(subject).astype(np.int32),
                recording=np.concatenate(recording).astype(np.int32),
                class_names=tuple(f"class_{c}" for c in range(classes)), channel_names=CHANNELS,
                sample_rate_hz=rate, acc_unit="g", gyr_unit="deg/s")
  fields.update(overrides)
  return recording_lib.Recordings(**fields)


# -- the generic .npz format ---------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
  rec = make_recordings(subjects=(1, 2, 3), splits={"train": (1, 2), "test": (3,)})
  path = str(tmp_path / "data.npz")
  recording_lib.save_npz(path, rec)
  back = recording_lib.load_npz(path)
  np.testing.assert_array_equal(back.x, rec.x)
  np.testing.assert_array_equal(back.y, rec.y)
  assert back.class_names == rec.class_names and back.channel_names == CHANNELS
  assert (back.sample_rate_hz, back.acc_unit, back.gyr_unit) == (100.0, "g", "deg/s")
  assert back.splits == {"train": (1, 2), "test": (3,)}
  with np.load(path, allow_pickle=False) as data:   # the format promise
    assert data["class_names"].dtype.kind == "U"


def _write(path, **fields):
  base = dict(x=np.zeros((10, 6), np.float32), y=np.zeros(10, np.int32),
              subject=np.ones(10, np.int32), recording=np.zeros(10, np.int32),
              class_names=np.array(["walk"]), channel_names=np.array(CHANNELS),
              sample_rate_hz=50.0, acc_unit="g", gyr_unit="rad/s")
  base.update(fields)
  np.savez(path, **{k: v for k, v in base.items() if v is not None})
  return str(path)


@pytest.mark.parametrize("fields, key, message", [
    (dict(y=None), "y", "is missing"),
    (dict(x=np.zeros((10,), np.float32)), "x", "2-D"),
    (dict(y=np.zeros(9, np.int32)), "y", r"shape \(10,\)"),
    (dict(y=np.full(10, 3, np.int32)), "y", r"\[0, 1\)"),
    (dict(subject=np.ones(10, np.float32)), "subject", "integer"),
    (dict(channel_names=np.array(["a", "b", "c", "d", "e", "f"])), "channel_names", "acc_x"),
    (dict(channel_names=np.array(["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "t"])),
     "channel_names", "only"),
    (dict(acc_unit="mg"), "acc_unit", "'g'"),
    (dict(gyr_unit="rpm"), "gyr_unit", "deg/s"),
    (dict(sample_rate_hz=-1.0), "sample_rate_hz", "positive"),
    (dict(x=np.full((10, 6), np.nan, np.float32)), "x", "non-finite"),
    (dict(split_train=np.array([1]), split_test=np.array([1])), "split_test", "also in"),
    (dict(class_names=np.array([1, 2])), "class_names", "strings"),
])
def test_npz_validator_names_the_offending_key(tmp_path, fields, key, message):
  path = _write(tmp_path / "bad.npz", **fields)
  with pytest.raises(recording_lib.RecordingsError, match=f"bad.npz.*'{key}'.*{message}"):
    recording_lib.load_npz(path)


def test_npz_with_objects_is_refused_without_pickle(tmp_path):
  path = str(tmp_path / "pickled.npz")
  np.savez(path, x=np.zeros((10, 6), np.float32),
           class_names=np.array(["walk", None], dtype=object))
  with pytest.raises(recording_lib.RecordingsError, match="pickled.npz"):
    recording_lib.load_npz(path)


# -- windowing -----------------------------------------------------------------------------------


def test_units_and_resampling_reach_the_encoder_convention():
  rec = make_recordings(subjects=(1,), classes=1, seconds=10.0, rate=100.0)
  out = windows.make_windows(rec, windows.WindowConfig(stride_s=5.0))
  # 10 s per recording, first second unlabelled: only the window at 5-10 s is pure.
  assert out.x.shape == (2, 250, 6) and out.counts["windows_dropped_mixed"] == 2
  # z was 1 g: 9.81 m/s^2 after conversion; the gyro peak 60 deg/s -> ~1.05 rad/s.
  np.testing.assert_allclose(out.x[..., 2].mean(), 9.80665, atol=0.02)
  np.testing.assert_allclose(np.abs(out.x[..., 3:]).max(), np.deg2rad(60), rtol=0.1)


def test_one_resampling_keeps_sines_and_gravity_up_to_the_edges():
  # Downstream (uniform rates) and pretraining (timestamped streams) share one method: a slow
  # sine on 1 g stays that sine on the target grid, edges included (no ringing towards zero),
  # and content above the target's Nyquist frequency is removed, not aliased.
  rate, target = 100.0, 50.0
  t = np.arange(1000) / rate
  slow = np.sin(2 * np.pi * 1.3 * t) + units.STANDARD_GRAVITY
  fast = 0.5 * np.sin(2 * np.pi * 40.0 * t)      # would alias to 10 Hz at 50 Hz
  out = resampling.resample(np.stack([slow, slow + fast], 1), rate, target)
  t_out = np.arange(len(out)) / target
  expected = np.sin(2 * np.pi * 1.3 * t_out) + units.STANDARD_GRAVITY
  assert len(out) == 500
  np.testing.assert_allclose(out[:, 0], expected, atol=0.05)
  np.testing.assert_allclose(out[10:-10, 1], expected[10:-10], atol=0.02)
  assert resampling.resample(out, target, target) is out
  # Jittered timestamps at ~100 Hz with a gap longer than max_gap_s: the same sine on the grid,
  # NaN inside the gap and outside the samples.
  jittered = t + np.random.default_rng(0).uniform(-1e-3, 1e-3, len(t))
  keep = (jittered < 3.0) | (jittered > 3.5)
  grid = resampling.grid(9.9, target)
  got = resampling.resample_stream(jittered[keep], slow[keep, None], grid, max_gap_s=0.3)[:, 0]
  usable = np.isfinite(got)
  kept = jittered[keep]
  gap_start, gap_end = kept[kept < 3.0][-1], kept[kept > 3.5][0]
  np.testing.assert_array_equal(usable, (grid >= kept[0]) & (grid <= kept[-1])
                                & ~((grid > gap_start) & (grid < gap_end)))
  np.testing.assert_allclose(got[usable], np.sin(2 * np.pi * 1.3 * grid[usable])
                             + units.STANDARD_GRAVITY, atol=0.05)


def test_windows_never_cross_recordings_and_labels_are_pure():
  rec = make_recordings(subjects=(1, 2), seconds=12.0)
  out = windows.make_windows(rec, windows.WindowConfig(stride_s=1.0))
  # 12 s at stride 1 s: windows start at 0..7 s; those starting before 1 s hold unlabelled data.
  per_recording = 8 - 1
  assert len(out) == 12 * per_recording
  assert out.counts["windows_dropped_mixed"] == 12
  for r in np.unique(out.recording):
    assert len(set(out.y[out.recording == r])) == 1


def test_null_class_option_keeps_mixed_windows_as_null():
  rec = make_recordings(subjects=(1,), seconds=12.0)
  out = windows.make_windows(rec, windows.WindowConfig(stride_s=1.0, labels="null_class"))
  assert out.class_names[-1] == "null" and (out.y == 3).sum() == 6


def test_short_recordings_are_padded_at_rest_or_dropped():
  rec = make_recordings(subjects=(1,), classes=2, seconds=3.0, rate=50.0)
  with pytest.raises(ValueError, match="no windows"):
    windows.make_windows(rec, windows.WindowConfig())
  out = windows.make_windows(rec, windows.WindowConfig(per_recording="center",
                                                       short="pad_at_rest", labels="null_class"))
  assert len(out) == 4 and out.counts["recordings_padded"] == 4
  # Padding: resting acceleration (about 1 g along z), no rotation; the trial in the middle.
  first = out.x[0]
  np.testing.assert_allclose(first[:50, 2], first[0, 2])
  assert abs(first[0, 2] - 9.8) < 0.3 and not first[:50, 3:].any()
  assert first[100:150, 3:].any()


def test_missing_gyroscope_is_an_error_unless_asked_for_zeros():
  rec = make_recordings(subjects=(1,), classes=1, seconds=10.0)
  acc_only = recording_lib.Recordings(
      x=rec.x[:, :3], y=rec.y, subject=rec.subject, recording=rec.recording,
      class_names=rec.class_names, channel_names=recording_lib.ACC_CHANNELS, sample_rate_hz=100.0,
      acc_unit="g", gyr_unit="rad/s", name="acc_only")
  with pytest.raises(ValueError, match="acc_only has no gyroscope.*missing_gyro=zeros"):
    windows.make_windows(acc_only, windows.WindowConfig())
  out = windows.make_windows(acc_only, windows.WindowConfig(missing_gyro="zeros"))
  assert not out.x[..., 3:].any() and any("no gyroscope" in n for n in out.notes)


# -- protocol ------------------------------------------------------------------------------------


def test_seeded_subject_split_is_disjoint_and_covers_everyone():
  subjects = np.repeat(np.arange(1, 11), 5)
  split = protocol.subject_split(subjects, None, split_seed=3)
  parts = [set(split[k]) for k in ("train", "val", "test")]
  assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
  assert set().union(*parts) == set(range(1, 11))
  assert (len(parts[2]), len(parts[1])) == (3, 2)
  assert protocol.subject_split(subjects, None, split_seed=3) == split
  assert protocol.subject_split(subjects, None, split_seed=4) != split


def test_official_split_without_val_takes_val_from_train_subjects():
  split = protocol.subject_split(np.arange(1, 9), {"train": (1, 2, 3, 4, 5, 6), "test": (7, 8)})
  assert split["test"] == (7, 8) and len(split["val"]) == 1
  assert set(split["val"]) | set(split["train"]) == set(range(1, 7))


def test_label_fraction_is_stratified_with_one_per_class():
  y = np.concatenate([np.zeros(200), np.ones(50), np.full(3, 2)]).astype(int)
  idx = protocol.label_fraction(y, 0.02, seed=0)
  assert np.bincount(y[idx]).tolist() == [4, 1, 1]
  assert len(protocol.label_fraction(y, 1.0, seed=0)) == len(y)
  assert not np.array_equal(protocol.label_fraction(y, 0.1, 0), protocol.label_fraction(y, 0.1, 1))


# -- end to end ----------------------------------------------------------------------------------


def tiny_finetune_config(data_path, **overrides):
  config = finetune_config.get_config("npz")
  config.data.path = data_path
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, embed_dim=32)
  config.train.update(steps=40, eval_every=10, batch_size=16)
  config.seeds = (0, 1)
  for key, value in overrides.items():
    config[key] = value
  return config


def test_scratch_run_writes_every_output_and_learns(tmp_path):
  path = str(tmp_path / "data.npz")
  recording_lib.save_npz(path, make_recordings())
  results = finetune.Evaluator(tiny_finetune_config(path), str(tmp_path / "out")).run()
  for name in ("results.json", "results.md", "confusion.png", "f1_vs_fraction.png"):
    assert os.path.getsize(tmp_path / "out" / name) > 0, name
  with open(tmp_path / "out" / "results.json") as f:
    saved = json.load(f)
  assert saved["rows"] == json.loads(json.dumps(results["rows"]))
  assert [(r["mode"], r["fraction"], r["seed"]) for r in saved["rows"]] == [
      ("scratch", 0.02, 0), ("scratch", 0.02, 1), ("scratch", 1.0, 0), ("scratch", 1.0, 1)]
  for r in saved["rows"]:
    assert {"macro_f1", "accuracy", "per_class_f1", "confusion"} <= set(r)
  train, test = set(saved["split"]["train"]), set(saved["split"]["test"])
  assert not train & test
  # Three well separated frequencies: full labels must beat chance (1/3) by far.
  assert np.mean([r["macro_f1"] for r in saved["rows"] if r["fraction"] == 1.0]) > 0.8
  table = (tmp_path / "out" / "results.md").read_text()
  assert "| scratch | 0.02 | 2 |" in table and "| scratch | 1 | 2 |" in table


@pytest.fixture(scope="module")
def pretrained_workdir(tmp_path_factory):
  """A few steps of tiny pretraining on a small demo dataset (imu, pose, video, text)."""
  from data_prep import make_demo   # pylint: disable=import-outside-toplevel
  from test_train import tiny_config  # pylint: disable=import-outside-toplevel
  from mujo_jax import train   # pylint: disable=import-outside-toplevel
  data = tmp_path_factory.mktemp("demo")
  make_demo.build(str(data), seed=0, clips_per_exercise=2, val_fraction=0.34,
                  clip_seconds=(10.0, 12.0), workers=1, records_per_shard=16,
                  log=lambda *_: None)
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  config = tiny_config(str(data), total_steps=4, checkpoint_every=4)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  train.Trainer(config, workdir).train()
  return workdir


def test_pretrained_modes_and_zero_shot(tmp_path, pretrained_workdir):
  path = str(tmp_path / "data.npz")
  recording_lib.save_npz(path, make_recordings(classes=2))
  config = tiny_finetune_config(path, pretrained=pretrained_workdir, seeds=(0,), fractions=(1.0,),
                                modes=("scratch", "linear", "finetune", "zero_shot"))
  evaluator = finetune.Evaluator(config, str(tmp_path / "out"))
  assert evaluator.model_config.width == 32      # the pretrained model's config, not the default
  _, pretrained, _ = checkpoint.load_pretrained(pretrained_workdir)
  fine = evaluator.initial_params("finetune", seed=0)["imu"]
  scratch = evaluator.initial_params("scratch", seed=0)["imu"]
  leaf = lambda tree: np.asarray(tree["encoder"]["block_0"]["mlp_in"]["kernel"])
  np.testing.assert_array_equal(leaf(fine), leaf(pretrained["imu"]))
  assert not np.array_equal(leaf(scratch), leaf(pretrained["imu"]))
  results = evaluator.run()
  assert [r["mode"] for r in results["rows"]] == ["scratch", "linear", "finetune", "zero_shot"]
  zero_shot = results["rows"][-1]
  assert zero_shot["prompts"] == ["a person doing class 0", "a person doing class 1"]
  assert zero_shot["train_windows"] == 0
  # The linear probe's embeddings are the pretrained tower's.
  emb = evaluator.embed(evaluator.parts["test"].x[:3])
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_without_pretrained_only_scratch_runs(tmp_path):
  path = str(tmp_path / "data.npz")
  recording_lib.save_npz(path, make_recordings(subjects=(1, 2, 3), classes=2))
  evaluator = finetune.Evaluator(tiny_finetune_config(path), str(tmp_path / "out"))
  assert evaluator.modes == ("scratch",)


def test_config_lists_are_checked(tmp_path):
  path = str(tmp_path / "data.npz")
  recording_lib.save_npz(path, make_recordings(subjects=(1, 2, 3), classes=2))
  with pytest.raises(ValueError, match="--config.modes: unknown \\['probe'\\]"):
    finetune.Evaluator(tiny_finetune_config(path, modes=("scratch", "probe")), str(tmp_path))
  with pytest.raises(ValueError, match=r"--config.fractions=\(0.02, 'half'\)"):
    finetune.Evaluator(tiny_finetune_config(path, fractions=(0.02, "half")), str(tmp_path))
