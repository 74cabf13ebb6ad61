"""Exported checkpoints give the same embeddings in PyTorch as in JAX."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch", reason="PyTorch (a test extra: requirements-dev.txt) "
                                            "is needed for the parity test")

from mujo_jax import checkpoint
from mujo_jax import export
from mujo_jax import model as model_lib
from mujo_jax import torch_mujo
from test_train import tiny_config
from mujo_jax import train

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def pretrained(demo_dir, tmp_path_factory):  # noqa: F811
  workdir = tmp_path_factory.mktemp("pretrain")
  config = tiny_config(demo_dir, total_steps=3, checkpoint_every=3, log_every=3)
  config.model.towers.text.depth = 2   # towers may differ
  with open(workdir / "config.json", "w") as f:
    f.write(config.to_json_best_effort())
  state = train.Trainer(config, str(workdir)).train()
  return str(workdir), config, jax.device_get(state.params)


def test_pytorch_embeddings_match_jax(pretrained, tmp_path):
  workdir, config, params = pretrained
  out = str(tmp_path / "export")
  result = subprocess.run([sys.executable, "-m", "mujo_jax.export", f"--workdir={workdir}",
                           f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-2000:]
  exported = json.load(open(os.path.join(out, "config.json")))
  assert exported["source"]["step"] == 3 and exported["towers"]["text"]["depth"] == 2
  assert exported["preprocessing"]["imu"]["rate_hz"] == 50.0
  assert exported["preprocessing"]["text"]["tokenizer"] == "sentence-transformers/all-MiniLM-L6-v2"

  torch_model = torch_mujo.MuJoEncoders.from_export(out)
  rng = np.random.default_rng(0)
  m = config.model
  batch = {"imu": rng.normal(0, 3, (4, m.imu_len, 6)).astype(np.float32),
           "pose": rng.normal(0, 0.3, (4, m.pose_len, m.num_joints, 3)).astype(np.float32),
           "video": rng.normal(0, 1, (4, m.video_len, m.video_dim)).astype(np.float32),
           "text_ids": rng.integers(1, m.vocab_size, (4, m.text_len)).astype(np.int32),
           "text_len": np.array([2, 10, 40, 64], np.int32)}
  want = model_lib.MuJo(config.model).apply({"params": params}, batch)
  with torch.no_grad():
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    got = {"imu": torch_model.embed_imu(t["imu"]), "pose": torch_model.embed_pose(t["pose"]),
           "video": torch_model.embed_video(t["video"]),
           "text": torch_model.embed_text(t["text_ids"], t["text_len"])}
  for modality in ("imu", "pose", "video", "text"):
    diff = np.abs(got[modality].numpy() - np.asarray(want[modality])).max()
    print(f"parity {modality}: max abs diff {diff:.2e}")
    assert diff <= 1e-4, (modality, diff)
  scale = float(model_lib.logit_scale(params))
  assert float(torch_model.logit_scale().detach()) == pytest.approx(scale, rel=1e-6)


def test_exported_names_and_shapes(pretrained):
  _, config, params = pretrained
  state = export.torch_state_dict(params, config.model)
  assert state["towers.imu.input_proj.weight"].shape == (32, 60)
  assert state["towers.text.token_embedding.weight"].shape == (30522, 32)
  assert state["towers.text.blocks.1.attention.out.weight"].shape == (32, 32)
  assert "towers.text.blocks.2.mlp_in.weight" not in state
  assert state["towers.pose.head.weight"].shape == (32, 32)
  torch_model = torch_mujo.MuJoEncoders(json.loads(json.dumps(
      export.export_config(config, 3, "w"))))
  assert set(torch_model.state_dict()) == set(state)
  assert export.EXPORT_FORMAT == torch_mujo.EXPORT_FORMAT
  # Training in PyTorch clamps the parameter as the JAX step does: scale in [1, cap].
  for log_scale, want in ((np.log(500.0), 100.0), (-2.0, 1.0), (np.log(30.0), 30.0)):
    with torch.no_grad():
      torch_model.log_logit_scale.fill_(float(log_scale))
    torch_model.clamp_logit_scale_()
    assert float(torch_model.logit_scale().detach()) == pytest.approx(want, rel=1e-5)


def test_incompatible_checkpoint_and_files_fail_clearly(pretrained, tmp_path):
  workdir, config, params = pretrained
  bad = tmp_path / "bad"
  os.makedirs(bad)
  os.symlink(os.path.join(workdir, "checkpoints"), bad / "checkpoints")
  changed = json.load(open(os.path.join(workdir, "config.json")))
  changed["model"]["width"] = 48
  (bad / "config.json").write_text(json.dumps(changed))
  with pytest.raises(ValueError, match=r"does not match its config.json.*checkpoint \(32,.*config \(48"):
    export.export(str(bad), str(tmp_path / "out"))
  with pytest.raises(ValueError, match="no checkpoint of step 7"):
    export.export(workdir, str(tmp_path / "out"), step=7)
  with pytest.raises(FileNotFoundError, match="config.json not found: is .* a mujo_jax training workdir"):
    export.export(str(tmp_path / "nothing"), str(tmp_path / "out"))
  exported = export.export_config(config, 3, workdir)
  exported["towers"]["imu"]["width"] = 64
  torch_model = torch_mujo.MuJoEncoders(exported)
  with pytest.raises(ValueError, match=r"does not fit config.json.*towers.imu"):
    torch_model.load_exported({k: torch.from_numpy(v) for k, v in
                               export.torch_state_dict(params, config.model).items()})


def test_scanned_checkpoint_exports_like_the_unscanned_one(pretrained, tmp_path):
  """A checkpoint trained with scan_layers (blocks stacked on a [depth] axis) exports the same."""
  _, config, params = pretrained
  scanned = config.copy_and_resolve_references()
  scanned.model.scan_layers = True
  scanned.model.remat = "full"
  stacked = model_lib.stack_blocks(params, scanned.model)
  assert stacked["text"]["encoder"]["blocks"]["mlp_in"]["kernel"].shape[0] == 2
  workdir = tmp_path / "scanned"
  os.makedirs(workdir)
  (workdir / "config.json").write_text(scanned.to_json_best_effort())
  manager = checkpoint.make_manager(str(workdir))
  checkpoint.save(manager, 5, {"params": stacked})
  manager.wait_until_finished()
  manager.close()
  out = export.export(str(workdir), str(tmp_path / "out"))
  got = load_file(os.path.join(out, "model.safetensors"))
  want = export.torch_state_dict(params, config.model)
  assert set(got) == set(want) and "towers.text.blocks.1.mlp_in.weight" in got
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
