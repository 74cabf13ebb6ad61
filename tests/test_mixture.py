"""Pretraining on a mixture of datasets: proportions, masking of left-out modalities, resume."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import example_ids
from conftest import tiny_example
from conftest import tiny_info
from conftest import write_tiny_dataset
from data_prep.dataset_writer import DatasetWriter
from mujo_jax import contrastive
from mujo_jax import input_pipeline as ip
from mujo_jax import mixture

A_IDS = {c * 100 + w for c in range(12) for w in range(5)}


def _model_config(num_joints=4):
  return ml_collections.ConfigDict(dict(
      modalities=("imu", "pose", "video", "text"), imu_len=20, imu_channels=6, pose_len=10,
      num_joints=num_joints, video_len=2, video_dim=8, text_len=8))


def _write_b(out_dir, joint_names=("pelvis", "left_wrist", "right_wrist", "head")):
  """A second dataset whose ids are 10000 + clip * 100 + window; optionally another skeleton."""
  info = tiny_info(name="b", joint_names=joint_names)
  rng = np.random.default_rng(1)
  writer = DatasetWriter(str(out_dir), info, records_per_shard=5)
  for split, clips in (("train", range(6)), ("val", range(6, 8))):
    examples = []
    for c in clips:
      for w in range(3):
        ex = tiny_example(info, rng, c, w)
        ex["imu"][0, 0, 0] = 10000 + c * 100 + w
        examples.append(ex)
    writer.write_split(split, examples)
  writer.finish()
  return str(out_dir)


def _make(data_dir, rows, seed):
  return ip.make_dataset(data_dir, "train", batch_size=rows, seed=seed,
                         augment_config=ip.AugmentConfig(imu_locations="all"),
                         process_index=0, process_count=1)


def test_rows_per_source_are_proportional_and_every_source_gets_a_row():
  assert mixture.rows_per_source([0.5, 0.25, 0.25], 8) == [4, 2, 2]
  assert mixture.rows_per_source([2, 1], 6) == [4, 2]
  assert sum(mixture.rows_per_source([1, 1, 1], 64)) == 64
  with pytest.raises(ValueError, match="gives source 1 .* no row"):
    mixture.rows_per_source([1.0, 0.001], 16)


def test_bad_entries_name_the_entry():
  with pytest.raises(ValueError, match=r"mixture\[0\] \(d\): weight 0.0 must be > 0"):
    mixture.parse_sources([("d", 0)])
  with pytest.raises(ValueError, match="unknown: \\['audio'\\]"):
    mixture.parse_sources([("d", 1, ("imu", "audio"))])
  with pytest.raises(ValueError, match="expected \\(dir, weight\\)"):
    mixture.parse_sources(["d"])
  assert mixture.parse_sources([("d", 1, "imu")])[0].modalities == ("imu",)


def test_batches_mix_sources_in_proportion_and_mask_what_a_source_leaves_out(tmp_path):
  a = str(tmp_path / "a")
  write_tiny_dataset(a)
  b = _write_b(tmp_path / "b")
  spec = ((a, 2.0), (b, 1.0, ("imu", "pose", "video")))   # b without its text
  ds = mixture.make_mixture_dataset(spec, batch_size=6, model_config=_model_config(),
                                    make_dataset=_make, seed=0, log=lambda *_: None)
  it = iter(ds)
  batches = [next(it) for _ in range(4)]
  for batch in batches:
    ids = example_ids(batch)
    assert set(ids[:4]) <= A_IDS and all(i >= 10000 for i in ids[4:])
    assert batch["source"].tolist() == [0, 0, 0, 0, 1, 1]
    assert batch["modality_mask"][:4].tolist() == [[1, 1, 1, 1]] * 4
    assert batch["modality_mask"][4:].tolist() == [[1, 1, 1, 0]] * 2
    assert not batch["text_ids"][4:].any() and not batch["text_len"][4:].any()
    assert batch["text_ids"][:4].any()
  # Deterministic, and the iterator state resumes exactly.
  it2 = iter(ds)
  for _ in range(2):
    next(it2)
  state = it2.get_state()
  it3 = iter(ds)
  it3.set_state(state)
  for want in batches[2:]:
    got = next(it3)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_left_out_modality_drops_out_of_the_loss_not_into_it():
  """The text rows of a source without text change no pair's loss: the imu-text loss over
  the mixed batch equals the one over the rows that have text."""
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  z = {m: unit(rng.normal(size=(6, 16))).astype(np.float32) for m in ("imu", "text")}
  batch = {"modality_mask": np.ones((6, 4), np.int32), "text_ids": np.ones((6, 8), np.int32),
           "text_len": np.full(6, 8, np.int32)}
  parts = [mixture.conform({k: v[:4] for k, v in batch.items()},
                           mixture.Source("a", 1.0), _model_config()),
           mixture.conform({k: v[4:] for k, v in batch.items()},
                           mixture.Source("b", 1.0, ("imu", "pose")), _model_config())]
  mask = np.concatenate([p["modality_mask"] for p in parts])
  masks = {"imu": jnp.asarray(mask[:, 0]), "text": jnp.asarray(mask[:, 3])}
  mixed, _ = contrastive.dense_contrastive_loss(z, masks, [("imu", "text")], 10.0)
  only_a, _ = contrastive.dense_contrastive_loss(
      {m: v[:4] for m, v in z.items()}, {m: jnp.ones(4) for m in masks}, [("imu", "text")], 10.0)
  np.testing.assert_allclose(mixed, only_a, rtol=1e-6)
  # Had the left-out text been zero-filled with its mask kept, the loss would differ.
  zero_filled = {"imu": z["imu"], "text": np.where(np.arange(6)[:, None] < 4, z["text"], 0)}
  wrong, _ = contrastive.dense_contrastive_loss(zero_filled, {m: jnp.ones(6) for m in masks},
                                                [("imu", "text")], 10.0)
  assert abs(float(wrong) - float(only_a)) > 1e-3


def test_a_source_on_another_skeleton_is_refused_unless_its_pose_is_left_out(tmp_path):
  a = str(tmp_path / "a")
  write_tiny_dataset(a)
  b = _write_b(tmp_path / "b", joint_names=("hip_center", "spine", "head", "left_wrist", "x"))
  with pytest.raises(ValueError, match=r"mixture source .*b \(b\) does not fit: .*pose rows "
                                       r"are \(10, 5, 3\), the model reads \(10, 4, 3\)"):
    mixture.make_mixture_dataset(((a, 1), (b, 1)), batch_size=4, model_config=_model_config(),
                                 make_dataset=_make, log=lambda *_: None)
  ds = mixture.make_mixture_dataset(((a, 1), (b, 1, ("imu", "text"))), batch_size=4,
                                    model_config=_model_config(), make_dataset=_make,
                                    log=lambda *_: None)
  batch = next(iter(ds))
  assert batch["pose"].shape == (4, 10, 4, 3) and not batch["pose"][2:].any()
  assert batch["modality_mask"][2:, 1].tolist() == [0, 0]
