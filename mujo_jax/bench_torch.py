r"""The JAX training step against the same model's training step in PyTorch; one JSON line.

  python -m mujo_jax.bench_torch --config=configs/pretrain.py --batch=32 --rounds=3
  python -m mujo_jax.bench_torch --config=configs/pretrain.py --batch=4096 \
      --device=cuda --dtype=bfloat16 --torch_compile          # the GPU comparison

Both sides train one model from one start: the JAX side is the real step
(`train.Trainer.compiled_step`: the towers, global InfoNCE over the pairs, AdamW
with clipping); the PyTorch side is `torch_mujo.MuJoEncoders` loaded with the
same initial parameters through `export.torch_state_dict`, the same symmetric
InfoNCE (masks, logit scale), `torch.optim.AdamW` with the same hyperparameters,
learning-rate schedule and no-decay mask, global-norm clipping, and the logit
scale's parameter clamped after each update. `make_torch_step` is that PyTorch
step; tests/test_bench_torch.py checks that it matches the JAX step number for
number.

The two are timed in alternating blocks (JAX, PyTorch, JAX, ...) of `--steps`
steps each, so that load from other processes hits both; the medians of all
timed steps per framework and their ratio are reported, with per-round medians,
thread settings, device and versions. On a busy shared CPU, PyTorch's OpenMP
threads stall on each other far more than XLA's work-stealing pool; prefix
`taskset -c 0` for a one-thread-each reading of the compute itself.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence

# Both frameworks share one accelerator: keep JAX from reserving 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
import jaxlib
import ml_collections
import numpy as np
import optax
from ml_collections import config_flags

from mujo_jax import bench
from mujo_jax import console
from mujo_jax import contrastive
from mujo_jax import export
from mujo_jax.modalities import INPUT_KEYS
from mujo_jax.modalities import MODALITIES
from mujo_jax import model as model_lib
from mujo_jax import train

FLAGS = flags.FLAGS


def torch_model_config(model_config: ml_collections.ConfigDict) -> dict:
  """The `MuJoEncoders` config of a JAX model config (export's config.json, towers only)."""
  towers = {}
  for m in model_config.modalities:
    s = model_lib.tower_settings(model_config, m)
    towers[m] = {k: s[k] for k in ("width", "depth", "num_heads", "mlp_dim", "num_tokens",
                                   "token_features", "patch_size", "vocab_size")}
  return {"format": export.EXPORT_FORMAT, "modalities": list(model_config.modalities),
          "embed_dim": model_config.embed_dim, "logit_scale_max": model_config.logit_scale_max,
          "towers": towers}


def torch_no_decay_names(params, model_config, no_decay_regex: str) -> set[str]:
  """PyTorch names of the parameters that train.make_optimizer exempts from weight decay.

  The regex matches JAX paths ("imu/encoder/block_0/norm_mlp/scale"); the mask is
  carried through `export.torch_state_dict` so it follows the same name mapping
  as the weights.
  """
  regex = re.compile(no_decay_regex)
  mask = jax.tree_util.tree_map_with_path(
      lambda path, x: np.full(np.shape(x), float(bool(regex.fullmatch(train.path_str(path))))),
      params)
  return {name for name, m in export.torch_state_dict(mask, model_config).items() if m.flat[0]}


def infonce_loss(embeddings, masks, pairs: Sequence[tuple[str, str]], logit_scale):
  """contrastive.dense_contrastive_loss in PyTorch: (total, {"a_b": loss}).

  embeddings: {m: [N, D]} unit vectors; masks: {m: [N] bool}. Per pair, rows and
  columns of examples lacking either modality are left out; float32 throughout.
  """
  import torch  # pylint: disable=import-outside-toplevel
  per_pair = {}
  for a, b in pairs:
    valid = masks[a] & masks[b]                                          # [N]
    logits = logit_scale * (embeddings[a].float() @ embeddings[b].float().T)   # [N, N]
    loss_sum = 0.0
    for direction in (logits, logits.T):
      # pylint: disable-next=protected-access
      direction = direction.masked_fill(~valid[None, :], contrastive._MASKED_LOGIT)
      row_loss = torch.logsumexp(direction, dim=1) - direction.diagonal()
      loss_sum = loss_sum + torch.where(valid, row_loss, 0.0).sum()
    per_pair[contrastive.pair_name(a, b)] = 0.5 * loss_sum / valid.sum().clamp(min=1)
  return sum(per_pair.values()), per_pair


def torch_batch(host: Mapping[str, np.ndarray], modalities: Sequence[str], device):
  """Host batch -> the tensors the PyTorch step takes (inputs as the loader gives them)."""
  import torch  # pylint: disable=import-outside-toplevel
  batch = {k: torch.from_numpy(np.array(v)).to(device)
           for k, v in host.items() if k != "modality_mask"}
  present = np.asarray(host["modality_mask"]).astype(bool)
  batch["masks"] = {m: torch.from_numpy(present[:, MODALITIES.index(m)]).to(device)
                    for m in modalities}
  return batch


def make_torch_step(config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict,
                    params, pairs: Sequence[tuple[str, str]], device: str = "cpu",
                    dtype: str = "float32", compile_model: bool = False):
  """(model, step) where step(batch, step_index) -> metrics runs one PyTorch training step.

  params: the JAX parameter tree (host) to start from. `batch` comes from
  `torch_batch`. The optimizer is train.make_optimizer's: global-norm clipping,
  then AdamW (b1, b2, eps 1e-8, weight decay decoupled and scaled by the learning
  rate, as optax.adamw) with the no-decay regex, learning rate from the same
  schedule at `step_index`. dtype "bfloat16": the towers run under autocast, the
  loss in float32 (as the JAX loss). compile_model: torch.compile the towers and
  loss (forward and backward); the optimizer stays eager.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from mujo_jax import torch_mujo  # pylint: disable=import-outside-toplevel
  model = torch_mujo.MuJoEncoders(torch_model_config(model_config))
  model.load_exported({k: torch.from_numpy(v)
                       for k, v in export.torch_state_dict(params, model_config).items()})
  model.to(device).train()
  o = config.optim
  no_decay = torch_no_decay_names(params, model_config, o.no_decay_regex)
  named = dict(model.named_parameters())
  groups = [{"params": [p for n, p in named.items() if n not in no_decay],
             "weight_decay": o.weight_decay},
            {"params": [p for n, p in named.items() if n in no_decay], "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(o.b1, o.b2), eps=1e-8,
                                fused=device.startswith("cuda"))
  _, schedule = train.make_optimizer(config)
  needed = tuple(m for m in model_config.modalities if any(m in p for p in pairs))
  autocast_dtype = {"float32": None, "bfloat16": torch.bfloat16}[dtype]

  def loss_fn(batch):
    with torch.autocast(torch.device(device).type, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
      embeddings = {}
      for m in needed:
        inputs = batch[INPUT_KEYS[m]]
        embeddings[m] = (model.towers[m](inputs, batch["text_len"]) if m == "text"
                         else model.towers[m](inputs))
    return infonce_loss(embeddings, batch["masks"], pairs, model.logit_scale())

  forward = torch.compile(loss_fn) if compile_model else loss_fn
  parameters = list(named.values())

  learning_rates = []    # the schedule's values, 1024 steps per (JAX) call

  def step(batch, step_index: int) -> dict:
    while step_index >= len(learning_rates):
      upcoming = np.arange(len(learning_rates), len(learning_rates) + 1024)
      learning_rates.extend(np.asarray(schedule(upcoming)).tolist())
    for group in optimizer.param_groups:
      group["lr"] = learning_rates[step_index]
    loss, per_pair = forward(batch)
    loss.backward()
    # optax.clip_by_global_norm scales by max_norm / norm when norm >= max_norm; PyTorch
    # by max_norm / (norm + 1e-6), capped at 1: a 1e-6 relative difference.
    grads = [p.grad for p in parameters if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads)
    torch.nn.utils.clip_grads_with_norm_(parameters, o.grad_clip_norm, grad_norm)
    optimizer.step()
    model.clamp_logit_scale_()       # as the JAX step: the parameter, after the update
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.detach(), "grad_norm": grad_norm.detach(),
            **{f"loss/{k}": v.detach() for k, v in per_pair.items()}}

  return model, step


def _timed_block(run_step: Callable[[], None], num_steps: int) -> list[float]:
  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - start)
  return times


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _summary(times: Sequence[float], rounds: Sequence[Sequence[float]], batch: int) -> dict:
  step_s = float(np.median(times))
  return {"step_ms_median": round(step_s * 1e3, 2),
          "examples_per_s": round(batch / step_s, 1),
          "step_ms_min_max": [round(min(times) * 1e3, 2), round(max(times) * 1e3, 2)],
          "round_medians_ms": [round(float(np.median(r)) * 1e3, 2) for r in rounds]}


def run(config: ml_collections.ConfigDict, steps: int, warmup: int, rounds: int,
        device: str = "auto", dtype: str = "auto", torch_compile: bool = False) -> dict:
  """Builds both steps, times them in alternating blocks; returns the JSON fields."""
  import torch  # pylint: disable=import-outside-toplevel
  if dtype != "auto":
    config.compute_dtype = dtype
  trainer = train.Trainer(config, workdir=None)
  dtype = trainer.model_config.dtype
  if device == "auto":
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  if device.startswith("cuda") and not torch.cuda.is_available():
    raise ValueError(f"--device={device} but this PyTorch ({torch.__version__}) sees no CUDA "
                     "device")
  pairs = contrastive.pairs_for_step(config.loss.strategy, trainer.modalities, 0, config.seed)
  batch_size = config.batch_size

  start = time.perf_counter()
  jax_step = trainer.compiled_step(pairs)
  jax_compile_s = time.perf_counter() - start
  state = trainer.init_state()
  params = jax.device_get(state.params)       # before the donated state is consumed
  batch = bench.synthetic_batch(config, batch_size, trainer.batch_sharding)
  host = {k: np.asarray(v) for k, v in batch.items()}

  model, torch_step = make_torch_step(config, trainer.model_config, params, pairs, device,
                                      dtype, torch_compile)
  t_batch = torch_batch(host, trainer.modalities, device)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

  first = {}
  holder = {"state": state, "jax_steps": 0, "torch_steps": 0}

  def jax_once():
    holder["state"], metrics = jax_step(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))
    holder["jax_steps"] += 1
    first.setdefault("jax", metrics)

  def torch_once():
    metrics = torch_step(t_batch, holder["torch_steps"])
    sync()
    holder["torch_steps"] += 1
    first.setdefault("torch", metrics)

  start = time.perf_counter()
  torch_once()                                 # includes torch.compile's compilation
  torch_first_step_s = time.perf_counter() - start
  _timed_block(torch_once, max(warmup - 1, 0))
  _timed_block(jax_once, warmup)
  jax_rounds, torch_rounds = [], []
  for i in range(rounds):
    jax_rounds.append(_timed_block(jax_once, steps))
    torch_rounds.append(_timed_block(torch_once, steps))
    logging.info("round %d/%d: median step %.1f ms (JAX), %.1f ms (PyTorch)", i + 1, rounds,
                 np.median(jax_rounds[-1]) * 1e3, np.median(torch_rounds[-1]) * 1e3)
  jax_times = [t for r in jax_rounds for t in r]
  torch_times = [t for r in torch_rounds for t in r]

  jax_device = jax.devices()[0]
  jax_summary = _summary(jax_times, jax_rounds, batch_size)
  torch_summary = _summary(torch_times, torch_rounds, batch_size)
  return {
      "config": config.get("name", ""), "batch": batch_size, "pairs": len(pairs),
      "steps_per_round": steps, "warmup": warmup, "rounds": rounds,
      "jax_speedup": round(torch_summary["step_ms_median"] / jax_summary["step_ms_median"], 3),
      "jax": dict(jax_summary, compile_s=round(jax_compile_s, 1), compute_dtype=dtype,
                  backend=jax.default_backend(), device_kind=jax_device.device_kind,
                  devices=jax.device_count(),
                  xla_flags=os.environ.get("XLA_FLAGS", ""),
                  # XLA's CPU client runs one intra-op thread per schedulable core.
                  intra_op_threads=(len(os.sched_getaffinity(0))
                                    if jax.default_backend() == "cpu" else None),
                  first_step_loss=float(first["jax"]["loss"])),
      "torch": dict(torch_summary, device=device,
                    device_name=(torch.cuda.get_device_name(device)
                                 if device.startswith("cuda") else _cpu_model()),
                    autocast_dtype=None if dtype == "float32" else dtype,
                    compile=torch_compile, first_step_s=round(torch_first_step_s, 1),
                    num_threads=torch.get_num_threads(),
                    num_interop_threads=torch.get_num_interop_threads(),
                    first_step_loss=float(first["torch"]["loss"])),
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "jaxlib": jaxlib.__version__, "torch": torch.__version__,
                   "optax": optax.__version__},
      "host": {"cpu": _cpu_model(), "cores": os.cpu_count(), "platform": sys.platform},
  }


def define_flags():
  """Defined only when run as a program; bench.py (imported) may already define the shared ones."""
  if "config" not in FLAGS:
    config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
  if "batch" not in FLAGS:
    flags.DEFINE_integer("batch", None, "Global batch size (default: the config's).")
  if "steps" not in FLAGS:
    flags.DEFINE_integer("steps", 20, "Timed steps per block.")
  if "warmup" not in FLAGS:
    flags.DEFINE_integer("warmup", 5, "Untimed steps per framework after compilation.")
  flags.DEFINE_integer("rounds", 3, "Alternating rounds (one JAX block, one PyTorch block).")
  flags.DEFINE_bool("torch_compile", False, "torch.compile the PyTorch towers and loss.")
  flags.DEFINE_string("device", "auto", "PyTorch device: cpu, cuda, cuda:N (auto: JAX's).")
  flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                    "Compute dtype of both: JAX's compute_dtype and PyTorch autocast "
                    "(auto: float32 on CPU, bfloat16 on accelerators).")
  flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  console.setup()
  config = FLAGS.config
  if FLAGS.batch:
    config.batch_size = FLAGS.batch
  result = run(config, FLAGS.steps, FLAGS.warmup, FLAGS.rounds, FLAGS.device, FLAGS.dtype,
               FLAGS.torch_compile)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
