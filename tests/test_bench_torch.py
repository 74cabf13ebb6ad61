"""The PyTorch comparison step trains the model the JAX step trains, and the script runs."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch (a test extra: requirements-dev.txt) "
                                            "is needed for the JAX-vs-PyTorch step benchmark")

from configs import pretrain
from mujo_jax import bench_torch
from mujo_jax import contrastive
from mujo_jax import export
from mujo_jax import model as model_lib
from mujo_jax import train

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY_MODEL = ("--config.model.depth=1", "--config.model.width=32", "--config.model.mlp_dim=64",
              "--config.model.num_heads=2", "--config.model.embed_dim=32")


def tiny_config():
  config = pretrain.get_config("demo")
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, embed_dim=32)
  config.model.towers.text.depth = 2
  config.batch_size = 16
  # A nonzero learning rate from step 0, decay strong enough to show, and a clip that bites.
  config.optim.update(learning_rate=1e-2, warmup_steps=0, weight_decay=1.0, grad_clip_norm=0.5)
  config.total_steps = 10
  return config


def random_batch(config, rng):
  """A batch with modality gaps, short and empty texts: every mask path is exercised."""
  host = model_lib.dummy_batch(config.model, config.batch_size)
  for key in ("imu", "pose", "video"):
    host[key] = rng.normal(size=host[key].shape).astype(host[key].dtype)
  m = config.model
  host["text_ids"] = rng.integers(1, m.vocab_size, host["text_ids"].shape, dtype=np.int32)
  host["text_len"] = rng.integers(0, m.text_len + 1, config.batch_size, dtype=np.int32)
  host["modality_mask"] = (rng.random(host["modality_mask"].shape) < 0.8).astype(np.int32)
  host["modality_mask"][:4] = 1
  return host


def test_pytorch_step_matches_the_jax_step_loss_gradients_and_updates():
  config = tiny_config()
  trainer = train.Trainer(config, workdir=None)     # 8 simulated devices: the sharded loss
  pairs = contrastive.all_pairs(trainer.modalities)
  step_fn = trainer.compiled_step(pairs)
  state = trainer.init_state()
  start = jax.device_get(state.params)
  host = random_batch(config, np.random.default_rng(0))
  batch = {k: jax.device_put(v, trainer.batch_sharding) for k, v in host.items()}
  model, torch_step = bench_torch.make_torch_step(config, trainer.model_config, start, pairs)
  torch_inputs = bench_torch.torch_batch(host, trainer.modalities, "cpu")
  before = export.torch_state_dict(start, trainer.model_config)

  for step in range(2):
    state, want = step_fn(state, batch)
    got = torch_step(torch_inputs, step)
    want = jax.device_get(want)
    assert set(got) == {k for k in want if k.startswith("loss")} | {"grad_norm"}
    for key, value in got.items():
      np.testing.assert_allclose(float(value), want[key], rtol=2e-5, err_msg=f"step {step} {key}")
    assert want["grad_norm"] > config.optim.grad_clip_norm   # clipping was active
    jax_params = export.torch_state_dict(jax.device_get(state.params), trainer.model_config)
    torch_params = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert set(jax_params) == set(torch_params)
    for name, value in jax_params.items():
      if name.endswith("attention.key.bias"):
        # Its gradient is 0 in exact arithmetic (a softmax ignores a per-row shift), so
        # Adam turns each framework's rounding noise into a step of its own.
        continue
      # Adam moves each weight by ~lr * g / (|g| + 1e-8), 1e-2 here (a wrong sign: 2e-2).
      # Only where the clipped |g| is ~1e-8 do float32 rounding differences show; such
      # weights are rare (seen: 1 of 800, 1.3e-4 off), so a few may exceed 1e-4.
      diff = np.abs(torch_params[name] - value)
      assert diff.max() < 0.25 * config.optim.learning_rate, (step, name, diff.max())
      assert np.sum(diff > 1e-4) <= max(1, diff.size // 1000), (step, name, np.sum(diff > 1e-4))
  moved = max(np.abs(jax_params[k] - before[k]).max() for k in before)
  assert moved > 1e-2          # both trained; a no-op step on either side would fail above
  # Decoupled weight decay only where train.make_optimizer applies it.
  no_decay = bench_torch.torch_no_decay_names(start, trainer.model_config,
                                              config.optim.no_decay_regex)
  assert "towers.imu.blocks.0.norm_mlp.weight" in no_decay and "log_logit_scale" in no_decay
  assert "towers.text.token_embedding.weight" in no_decay
  assert "towers.imu.blocks.0.mlp_in.weight" not in no_decay


def test_script_prints_one_json_line_with_both_frameworks():
  out = subprocess.run(
      [sys.executable, "-m", "mujo_jax.bench_torch", "--config=configs/pretrain.py:demo",
       "--batch=8", "--steps=2", "--warmup=1", "--rounds=1", *TINY_MODEL],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""), capture_output=True,
      text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["batch"] == 8 and result["pairs"] == 6 and result["rounds"] == 1
  for side in ("jax", "torch"):
    assert result[side]["examples_per_s"] > 0
    assert len(result[side]["round_medians_ms"]) == 1
  assert result["jax_speedup"] > 0
  assert result["jax"]["backend"] == "cpu" and result["jax"]["compute_dtype"] == "float32"
  assert result["torch"]["device"] == "cpu" and result["torch"]["num_threads"] >= 1
  assert result["torch"]["autocast_dtype"] is None and result["torch"]["compile"] is False
  assert set(result["versions"]) >= {"jax", "jaxlib", "torch"}
  # Same start, same batch: the first steps' losses agree.
  assert result["torch"]["first_step_loss"] == pytest.approx(result["jax"]["first_step_loss"],
                                                             rel=1e-5)
