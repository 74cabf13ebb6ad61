"""Downstream evaluation of classes that windowing removes: absent from macro F1, named, explained.

The data: postural transitions of 3 s between 20 s of walking and sitting, in the generic npz
format, cut into 5 s windows every 2.5 s: every window touching a transition is mixed, so the
transitions have no windows at all.
"""

import json
import logging

import numpy as np
from sklearn import metrics as sk_metrics

from mujo_jax.downstream import coverage
from mujo_jax.downstream import finetune
from mujo_jax.downstream import windows
from mujo_jax.sources import recording as recording_lib
from test_downstream import CHANNELS
from test_downstream import tiny_finetune_config

RATE = 50.0
CLASSES = ("walk", "sit", "sit_to_stand", "stand_to_sit")
# (class, seconds) of one recording, starting at 0, 20, 23, 43, 46 and 66 s.
SEQUENCE = ((0, 20.0), (2, 3.0), (1, 20.0), (3, 3.0), (0, 20.0), (2, 3.0))


def transitions_recordings(subjects=(1, 2, 3, 4, 5, 6), recordings_per_subject=2):
  """Each recording follows SEQUENCE; each class is a sine of its own frequency on 1 g."""
  rng = np.random.default_rng(0)
  x, y, subject, recording = [], [], [], []
  for s in subjects:
    for r in range(recordings_per_subject):
      for c, seconds in SEQUENCE:
        n = int(seconds * RATE)
        t = np.arange(n) / RATE
        f = 0.8 + 1.1 * c
        acc = np.stack([0.4 * np.sin(2 * np.pi * f * t), 0.2 * np.cos(2 * np.pi * f * t),
                        np.ones(n)], 1)
        gyr = 0.5 * np.stack([np.sin(2 * np.pi * f * t)] * 3, 1)
        x.append(np.concatenate([acc, gyr], 1) + rng.normal(0, 0.05, (n, 6)))
        y.append(np.full(n, c))
        subject.append(np.full(n, s))
        recording.append(np.full(n, s * 10 + r))
  return recording_lib.Recordings(
      x=np.concatenate(x).astype(np.float32), y=np.concatenate(y).astype(np.int32),
      subject=np.concatenate(subject).astype(np.int32),
      recording=np.concatenate(recording).astype(np.int32), class_names=CLASSES,
      channel_names=CHANNELS, sample_rate_hz=RATE, acc_unit="g", gyr_unit="rad/s")


def test_scores_average_over_present_classes_and_mark_absent_ones():
  y_true = np.array([0, 0, 0, 1, 1, 1])
  y_pred = np.array([0, 0, 1, 1, 1, 3])          # class 3 predicted, never true; 2 neither
  got = finetune.scores(y_true, y_pred, num_classes=4)
  assert got["macro_f1"] == sk_metrics.f1_score(y_true, y_pred, labels=[0, 1], average="macro")
  assert got["macro_f1"] > sk_metrics.f1_score(y_true, y_pred, labels=range(4), average="macro",
                                               zero_division=0)
  assert got["per_class_f1"][2:] == [None, None]
  assert got["per_class_f1"][:2] == [0.8, 0.6667]


def test_windows_count_each_class_before_and_after_the_drops():
  rec = transitions_recordings(subjects=(1,), recordings_per_subject=1)
  out = windows.make_windows(rec, windows.WindowConfig())
  counts = coverage.class_counts(out, [1], RATE)
  # Windows start every 2.5 s; a 3 s transition at [20, 23) s is touched by those starting at
  # 17.5, 20 and 22.5 s, all mixed.
  assert counts["stand_to_sit"] == dict(segments=1, seconds=3.0, median_segment_s=3.0,
                                        windows_before=3, windows_after=0, kept_fraction=0.0)
  # The last window starts at 62.5 s: it alone touches the transition at [66, 69) s.
  assert counts["sit_to_stand"]["segments"] == 2 and counts["sit_to_stand"]["windows_before"] == 4
  # Walking at [0, 20) and [46, 66) s: the first fully covered, the second from 47.5 to 65 s.
  assert counts["walk"]["windows_after"] == 7 + 6
  assert counts["walk"]["kept_fraction"] == round((20 + 17.5) / 40, 3)


def test_suggested_window_keeps_a_window_of_a_median_segment():
  assert coverage.suggest_window(3.0) == (2.0, 1.0)
  assert coverage.suggest_window(1.0) == (0.6, 0.3)
  assert coverage.suggest_window(0.1) is None
  # Any alignment of a 3 s segment on a 1 s grid holds a whole 2 s window.
  rec = transitions_recordings(subjects=(1,), recordings_per_subject=1)
  out = windows.make_windows(rec, windows.WindowConfig(window_s=2.0, stride_s=1.0))
  assert (out.y == CLASSES.index("sit_to_stand")).sum() >= 2
  assert (out.y == CLASSES.index("stand_to_sit")).sum() >= 1


def test_classes_without_test_windows_are_left_out_and_named(tmp_path, caplog):
  path = str(tmp_path / "transitions.npz")
  recording_lib.save_npz(path, transitions_recordings())
  config = tiny_finetune_config(path, seeds=(0,), fractions=(1.0,))
  config.train.update(steps=10, eval_every=5, warmup_steps=2)
  out = tmp_path / "out"
  with caplog.at_level(logging.WARNING):
    results = finetune.Evaluator(config, str(out)).run()
  saved = json.loads((out / "results.json").read_text())
  table = (out / "results.md").read_text()
  absent = ["sit_to_stand", "stand_to_sit"]

  assert saved["classes_without_test_windows"] == absent
  assert saved["scored_classes"] == ["walk", "sit"]
  for row in saved["rows"]:
    # Macro F1 is sklearn's over the present classes only, not the old mean with zeros.
    confusion = np.array(row["confusion"])
    y_true = np.repeat(np.arange(4), confusion.sum(axis=1))
    y_pred = np.concatenate([np.repeat(np.arange(4), r) for r in confusion])
    assert set(np.unique(y_true)) == {0, 1}
    assert row["macro_f1"] == sk_metrics.f1_score(y_true, y_pred, labels=[0, 1],
                                                  average="macro", zero_division=0)
    assert row["macro_f1"] > 0
    assert row["per_class_f1"][2:] == [None, None]
  for name in absent:
    test, everyone = saved["class_windows"]["test"][name], saved["class_windows"]["all"][name]
    assert test["windows_before"] > 0 and test["windows_after"] == 0
    assert everyone["windows_after"] == 0 and everyone["kept_fraction"] == 0.0
    sentence = (f"{name} (windows before -> after windowing: test {test['windows_before']} -> 0, "
                f"all subjects {everyone['windows_before']} -> 0)")
    assert sentence in table and any(sentence in n for n in saved["notes"])
    assert sentence in caplog.text
    dropped = saved["classes_mostly_dropped"][name]
    assert (dropped["suggested_window_s"], dropped["suggested_stride_s"]) == (2.0, 1.0)
    assert f"WINDOWING REMOVED MOST OF CLASS {name!r}" in caplog.text
    assert "window_s=2 --config.data.window.stride_s=1" in table
  assert "macro F1 averages over the 2 of 4 classes with test windows" in table
  assert results["classes_without_test_windows"] == absent
  assert all(r.levelno == logging.WARNING for r in caplog.records if "WINDOWING" in r.message)
  # The suggestion keeps windows of the short classes in every split's recordings.
  rec = recording_lib.load_npz(path)
  shorter = windows.make_windows(rec, windows.WindowConfig(window_s=2.0, stride_s=1.0))
  for name in absent:
    assert (shorter.y == CLASSES.index(name)).sum() >= 1
