"""The step benchmark: MFU's peak table and one small run's JSON line."""

import json
import os
import subprocess
import sys

import pytest

from mujo_jax import bench

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.parametrize("device_kind, peak", [
    ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5", 459.0), ("TPU v5p", 459.0),
    ("TPU v6 lite", 918.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0), ("cpu", None),
])
def test_peak_table_matches_the_most_specific_name(device_kind, peak):
  assert bench.peak_bf16_tflops(device_kind) == peak


def test_bench_prints_one_json_line_with_throughput_and_no_mfu_on_cpu():
  out = subprocess.run(
      [sys.executable, "-m", "mujo_jax.bench", "--config=configs/pretrain.py:demo", "--batch=8",
       "--steps=2", "--warmup=1", "--config.model.depth=1", "--config.model.width=32",
       "--config.model.mlp_dim=64", "--config.model.num_heads=2"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""), capture_output=True,
      text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  # Speeds are only checked to be reported (a tiny model's TFLOP/s rounds to 0.0 on a busy
  # CPU); the analytic FLOPs per example are not timed.
  assert result["batch"] == 8 and result["examples_per_s"] > 0 and "tflops_per_s" in result
  assert result["gflops_per_example_fwd"] > 0
  assert result["mfu"] is None and result["peak_bf16_tflops_per_chip"] is None
  assert result["backend"] == "cpu"


def test_bench_memory_reports_per_device_bytes_for_each_batch_and_chunk():
  out = subprocess.run(
      [sys.executable, "-m", "mujo_jax.bench_memory", "--config=configs/pretrain.py:demo",
       "--cpu_devices=2", "--batch=8,16", "--chunk_size=4", "--config.model.depth=1",
       "--config.model.width=32", "--config.model.mlp_dim=64", "--config.model.num_heads=2"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""), capture_output=True,
      text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert [(r["batch"], r["chunk_size"]) for r in rows] == [(8, 4), (16, 4)]
  assert all(r["devices"] == 2 and r["temp_bytes"] > 0 for r in rows)
  # The same (donated) state whatever the batch; the batch's own bytes double with it.
  state_bytes = rows[0]["alias_bytes"]
  assert state_bytes > 0 and rows[1]["alias_bytes"] == state_bytes
  batch_bytes = [r["argument_bytes"] - state_bytes for r in rows]
  assert batch_bytes[1] == 2 * batch_bytes[0] > 0
  assert "temp MiB" in out.stdout
