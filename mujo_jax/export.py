r"""Converts a pretraining checkpoint for PyTorch users.

  python -m mujo_jax.export --workdir=PRETRAIN_WORKDIR --out=DIR [--step=N]

writes DIR/model.safetensors (PyTorch state_dict names and layouts of
mujo_jax/torch_mujo.py) and DIR/config.json (tower shapes and the preprocessing
facts a user must reproduce: rates, window, patching, channel order, units,
tokenizer). `MuJoEncoders.from_export(DIR)` loads them without JAX.
"""

from __future__ import annotations

from absl import app
from absl import flags
import numpy as np

from mujo_jax import checkpoint
from mujo_jax import console
from mujo_jax import model as model_lib
from mujo_jax import records
from mujo_jax import storage

# Also in torch_mujo.py, which must import without JAX (and this module without torch).
EXPORT_FORMAT = "mujo_jax.torch/1"


def torch_state_dict(params, model_config) -> dict[str, np.ndarray]:
  """Flax parameter tree -> PyTorch names and layouts (Linear weights are [out, in]).

  Checkpoints trained with `scan_layers` (blocks stacked on a leading [depth]
  axis) are unstacked first, so both layouts give the same state dict.
  """
  if model_config.get("scan_layers", False):
    params = model_lib.unstack_blocks(params, model_config)
  linear = lambda p: {"weight": p["kernel"].reshape(p["kernel"].shape[0], -1).T}
  state = {"log_logit_scale": np.asarray(params["log_logit_scale"], np.float32)}
  for m in model_config.modalities:
    architecture = model_lib.tower_settings(model_config, m)["architecture"]
    if architecture != "transformer":
      raise NotImplementedError(f"the PyTorch export covers transformer towers; the {m} tower "
                                f"is {architecture!r}")
    tower, out = params[m], {}
    if m == "text":
      out["token_embedding.weight"] = tower["token_embedding"]["embedding"]
    else:
      out["input_proj.weight"] = tower["input_proj"]["kernel"].T
      out["input_proj.bias"] = tower["input_proj"]["bias"]
    out["pos_embedding"], out["cls"] = tower["pos_embedding"], tower["cls"]
    for i in range(model_lib.tower_settings(model_config, m)["depth"]):
      block, name = tower["encoder"][f"block_{i}"], f"blocks.{i}"
      for norm in ("norm_attention", "norm_mlp"):
        out[f"{name}.{norm}.weight"] = block[norm]["scale"]
        out[f"{name}.{norm}.bias"] = block[norm]["bias"]
      attention = block["attention"]
      for proj in ("query", "key", "value"):
        out[f"{name}.attention.{proj}.weight"] = linear(attention[proj])["weight"]
        out[f"{name}.attention.{proj}.bias"] = attention[proj]["bias"].reshape(-1)
      kernel = attention["out"]["kernel"]                       # [heads, head_dim, width]
      out[f"{name}.attention.out.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
      out[f"{name}.attention.out.bias"] = attention["out"]["bias"]
      for mlp in ("mlp_in", "mlp_out"):
        out[f"{name}.{mlp}.weight"] = block[mlp]["kernel"].T
        out[f"{name}.{mlp}.bias"] = block[mlp]["bias"]
    out["norm_out.weight"], out["norm_out.bias"] = tower["norm_out"]["scale"], tower["norm_out"]["bias"]
    out["head.weight"] = tower["head"]["kernel"].T
    state.update({f"towers.{m}.{k}": v for k, v in out.items()})
  return {k: np.array(v, np.float32, order="C") for k, v in state.items()}


def export_config(config, step: int, workdir: str) -> dict:
  """config.json: the towers' shapes and the preprocessing a user must reproduce."""
  m = config.model
  towers = {}
  for modality in m.modalities:
    s = model_lib.tower_settings(m, modality)
    towers[modality] = {k: s[k] for k in ("width", "depth", "num_heads", "mlp_dim", "num_tokens",
                                          "token_features", "patch_size", "vocab_size")}
  try:
    info = records.DatasetInfo.load(config.data.dir)
  except FileNotFoundError:
    info = None
  pre = {
      "imu": {"input_shape": [m.imu_len, m.imu_channels], "patch_samples": m.imu_patch,
              "rate_hz": info.imu_rate_hz if info else m.imu_len / 5.0,
              "window_s": info.window_s if info else 5.0,
              "channels": list(info.imu_channels if info else records.IMU_CHANNELS),
              "units": dict(info.imu_units if info else records.IMU_UNITS),
              "frame": "each sensor's own frame; one sensor location per example",
              "trained_locations": list(info.imu_locations) if info else None,
              # > 0: each input is one whole trial resampled to this many steps; rate_hz and
              # window_s then describe the source recording, not the input.
              "trial_steps": info.trial_steps if info else 0},
      "pose": {"input_shape": [m.pose_len, m.num_joints, 3], "patch_frames": m.pose_patch,
               "rate_hz": info.pose_rate_hz if info else m.pose_len / 5.0,
               "skeleton": info.skeleton if info else None,
               "joint_names": list(info.joint_names) if info else None,
               "units": "metres, root-relative"},
      "video": {"input_shape": [m.video_len, m.video_dim],
                "features": info.video_features if info else None},
      "text": {"input_shape": [m.text_len], "tokenizer": info.tokenizer if info else None,
               "vocab_size": m.vocab_size,
               "text_len": "number of real tokens including [CLS] and [SEP]"},
  }
  return {"format": EXPORT_FORMAT, "modalities": list(m.modalities), "embed_dim": m.embed_dim,
          "logit_scale_max": m.logit_scale_max, "towers": towers,
          "preprocessing": {k: v for k, v in pre.items() if k in m.modalities},
          "source": {"workdir": storage.absolute(workdir), "step": step,
                     "config_name": config.get("name", "")}}


def export(workdir: str, out: str, step: int | None = None) -> str:
  """workdir's checkpoint -> out/model.safetensors + out/config.json (both local or gs://)."""
  from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
  config, params, step = checkpoint.load_pretrained(workdir, step)
  storage.write_bytes(storage.join(out, "model.safetensors"),
                      save(torch_state_dict(params, config.model),
                           metadata={"format": EXPORT_FORMAT, "step": str(step)}))
  storage.write_json(storage.join(out, "config.json"), export_config(config, step, workdir),
                     indent=2)
  return out


FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so CLI modules import together cleanly."""
  flags.DEFINE_string("workdir", None, "Pretraining workdir (config.json + checkpoints/).")
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
  del argv
  console.setup()
  out = export(FLAGS.workdir, FLAGS.out, FLAGS.step)
  print(f"wrote {out}/model.safetensors and {out}/config.json")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
