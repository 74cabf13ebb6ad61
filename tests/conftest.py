"""Shared fixtures: a tiny FiMAD-format dataset with random content."""

import os

# Eight simulated CPU devices, so sharding tests run on any machine. Must be set
# before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from data_prep.dataset_writer import DatasetWriter
from mujo_jax import records

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def tiny_info(**overrides) -> records.DatasetInfo:
  settings = dict(name="tiny", imu_locations=("left_wrist", "right_wrist", "pelvis"),
                  joint_names=("pelvis", "left_wrist", "right_wrist", "head"),
                  class_names=("a", "b", "c"), tokenizer="test", vocab_size=100, pad_id=0,
                  window_s=2.0, imu_rate_hz=10.0, pose_rate_hz=5.0, video_steps=2,
                  video_dim=8, text_len=8)
  settings.update(overrides)
  return records.DatasetInfo(**settings)


def tiny_example(info: records.DatasetInfo, rng: np.random.Generator, clip: int,
                 window: int, drop: tuple[str, ...] = ()) -> dict:
  specs = info.array_specs()
  n = int(rng.integers(2, info.text_len + 1))
  ex = {
      "imu": rng.normal(size=specs["imu"].shape).astype(np.float16),
      "pose": rng.normal(size=specs["pose"].shape).astype(np.float16),
      "video": rng.normal(size=specs["video"].shape).astype(np.float16),
      "text_ids": np.pad(rng.integers(1, info.vocab_size, n), (0, info.text_len - n)),
      "text_len": n, "label": clip % len(info.class_names),
      "clip_id": f"clip{clip:03d}", "window_index": window,
  }
  for key in drop:
    ex[key] = None
  return ex


def write_tiny_dataset(out_dir, num_clips=(12, 4), windows_per_clip=5, records_per_shard=7,
                       seed=0) -> records.DatasetInfo:
  """Writes train/val splits; clip c's window w has imu[0,0,0] = c*100 + w as an id."""
  info = tiny_info()
  rng = np.random.default_rng(seed)
  writer = DatasetWriter(str(out_dir), info, records_per_shard=records_per_shard)
  first = 0
  for split, n in zip(("train", "val"), num_clips):
    examples = []
    for c in range(first, first + n):
      for w in range(windows_per_clip):
        ex = tiny_example(info, rng, c, w)
        ex["imu"][0, 0, 0] = c * 100 + w
        examples.append(ex)
    writer.write_split(split, examples)
    first += n
  return writer.finish()


def example_ids(batch) -> np.ndarray:
  """The id that write_tiny_dataset planted in every example of a batch."""
  imu = batch["imu"]
  return (imu[:, 0, 0, 0] if imu.ndim == 4 else imu[:, 0, 0]).astype(np.int64)


@pytest.fixture
def tiny_dataset(tmp_path):
  write_tiny_dataset(tmp_path)
  return str(tmp_path)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
  """A small demo dataset (30 clips), built once and only read by the tests."""
  from data_prep import make_demo  # pylint: disable=import-outside-toplevel
  out = tmp_path_factory.mktemp("demo")
  make_demo.build(str(out), seed=0, clips_per_exercise=3, val_fraction=0.34,
                  clip_seconds=(10.0, 16.0), workers=2, records_per_shard=16, log=lambda *_: None)
  return str(out)
