import filecmp
import os

import numpy as np

from data_prep import fimad_split
from data_prep import make_demo
from mujo_jax import input_pipeline
from mujo_jax import records
from mujo_jax.sim import motion

SMALL = dict(clips_per_exercise=2, val_fraction=0.5, clip_seconds=(10.0, 12.0), workers=2,
             records_per_shard=8, log=lambda *_: None)


def test_demo_is_deterministic_complete_and_readable(tmp_path):
  a = make_demo.build(str(tmp_path / "a"), seed=3, **SMALL)
  make_demo.build(str(tmp_path / "b"), seed=3, workers=1,
                  **{k: v for k, v in SMALL.items() if k != "workers"})
  files = sorted(os.listdir(tmp_path / "a"))
  assert files == sorted(os.listdir(tmp_path / "b"))
  match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
  assert not mismatch and not errors, mismatch  # byte-identical, whatever the worker count
  c = make_demo.build(str(tmp_path / "c"), seed=4, **SMALL)
  assert c.splits["train"].num_examples != a.splits["train"].num_examples or not filecmp.cmp(
      tmp_path / "a" / "train-00000.tfrecord", tmp_path / "c" / "train-00000.tfrecord", False)

  info = records.DatasetInfo.load(str(tmp_path / "a"))
  assert info.class_names == motion.EXERCISES and len(info.imu_locations) == 16
  assert info.splits["train"].num_clips == 10 and info.splits["val"].num_clips == 10
  split = fimad_split.load_split(str(tmp_path / "a" / "train_val_split.json"))
  assert sorted(set(split.values())) == ["train", "val"] and len(split) == 20

  ds = input_pipeline.make_dataset(str(tmp_path / "a"), "val", batch_size=4, shuffle=False,
                                   num_epochs=1, drop_remainder=False, process_index=0,
                                   process_count=1,
                                   augment_config=input_pipeline.AugmentConfig("all"))
  batches = list(ds)
  labels = np.concatenate([b["label"] for b in batches])
  assert set(labels) == set(range(10)) and len(labels) == info.splits["val"].num_examples
  b = batches[0]
  assert b["imu"].shape == (4, 16, 250, 6) and b["pose"].shape == (4, 125, 17, 3)
  assert (b["modality_mask"] == 1).all() and (b["text_ids"][:, 0] == 101).all()
  np.testing.assert_allclose(b["pose"][:, :, 0], 0, atol=1e-3)  # root-relative
  acc = np.linalg.norm(b["imu"][..., :3].astype(np.float32), axis=-1)
  assert 8.0 < np.median(acc) < 12.0  # gravity dominates the specific force
  # Windows of a clip are consecutive in time: same clip id, window indexes 0..n-1.
  for clip in set(np.concatenate([x["clip_id"] for x in batches])):
    windows = sorted(np.concatenate([x["window_index"][x["clip_id"] == clip] for x in batches]))
    assert windows == list(range(len(windows)))
