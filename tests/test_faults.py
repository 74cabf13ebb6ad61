"""Faults a job survives or refuses cleanly: SIGKILL at any moment, a half-written
checkpoint, a misspelled config field, a workdir of another model, a foreign dataset.

The kill test is slow: by default it kills the job 2 times; MUJO_FULL_TESTS=1 kills
it 12 times. Every run here shares one XLA compilation cache, so a rerun costs
start-up, not compilation.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import finetune as finetune_config
from configs import pretrain
from mujo_jax import checkpoint
from mujo_jax import metric_writer
from mujo_jax import preflight
from mujo_jax import records

ROOT = os.path.join(os.path.dirname(__file__), "..")
FULL = bool(os.environ.get("MUJO_FULL_TESTS"))
TOTAL_STEPS = 12
CHECKPOINT_EVERY = 2
TINY = ["--config.model.depth=1", "--config.model.width=32", "--config.model.mlp_dim=64",
        "--config.model.num_heads=2", "--config.model.embed_dim=32", "--config.batch_size=8",
        f"--config.total_steps={TOTAL_STEPS}", "--config.optim.warmup_steps=2",
        f"--config.checkpoint_every={CHECKPOINT_EVERY}", "--config.log_every=1",
        "--config.eval_every=0", "--config.data.num_workers=1",
        "--config.data.build_demo_if_missing=False"]
# The jobs' programs are compiled without XLA's backend (LLVM) optimisations: they run a few
# steps of a tiny model, so compiling is most of their time. Every run here compiles alike.
ENV = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")
TMP_SUFFIX = ".orbax-checkpoint-tmp"   # what Orbax names a checkpoint until it is complete


def main_command(workdir, data_dir, cache_dir, *extra):
  return [sys.executable, "-m", "mujo_jax.main", "--config=configs/pretrain.py:demo",
          f"--workdir={workdir}", f"--config.data.dir={data_dir}",
          f"--config.compilation_cache_dir={cache_dir}", *TINY, *extra]


class Job:
  """One run of the main job in its own process group, its log in a file."""

  def __init__(self, cmd, log_path):
    self.log_path = log_path
    self._log = open(log_path, "w")
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=self._log, stderr=self._log,
                                 start_new_session=True)

  def log(self) -> str:
    if not self._log.closed:
      self._log.flush()
    return open(self.log_path).read()

  def kill(self):
    """SIGKILL to the job's process. What it started (Grain's input worker, then
    multiprocessing's resource tracker, which frees the shared memory) must exit
    by itself (input_pipeline._start_worker); the test fails if it does not."""
    self.proc.send_signal(signal.SIGKILL)
    self.proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while self._signal_group(0) and time.monotonic() < deadline:
      time.sleep(0.2)
    outlived = self._signal_group(signal.SIGKILL)
    self._log.close()
    assert not outlived, "processes of the killed job (input workers?) outlived it by 30 s"

  def reap(self, timeout=30):
    """Waits for the job's process group to be gone; SIGKILL to whatever remains."""
    deadline = time.monotonic() + timeout
    while self._signal_group(0) and time.monotonic() < deadline:
      time.sleep(0.1)
    self._signal_group(signal.SIGKILL)

  def _signal_group(self, sig) -> bool:
    try:
      os.killpg(self.proc.pid, sig)
      return True
    except ProcessLookupError:
      return False

  def wait(self, timeout=600) -> int:
    code = self.proc.wait(timeout=timeout)
    self._log.close()
    return code


def complete_steps(workdir) -> list[int]:
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def logged_steps(workdir) -> list[int]:
  """Steps in metrics.jsonl so far (read while a job appends: whole lines only)."""
  path = os.path.join(workdir, metric_writer.METRICS_FILENAME)
  if not os.path.exists(path):
    return []
  *lines, _ = open(path).read().split("\n")
  return [json.loads(line)["step"] for line in lines if line]


def final_params(workdir) -> dict[str, np.ndarray]:
  _, params, step = checkpoint.load_pretrained(str(workdir))
  assert step == TOTAL_STEPS
  return {"/".join(map(str, k)): v for k, v in _flat(params)}


def _flat(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, prefix + (key,))
    else:
      yield prefix + (key,), np.asarray(value)


def assert_same_run(workdir, reference):
  """Bitwise the parameters of the uninterrupted run, and every logged loss (steps done
  twice, before and after a kill, included) that run's loss of the same step."""
  params = final_params(workdir)
  assert params.keys() == reference["params"].keys()
  for name, value in params.items():
    np.testing.assert_array_equal(value, reference["params"][name], err_msg=name)
  for row in metric_writer.read_metrics(str(workdir)):
    assert row["loss"] == reference["losses"][row["step"]], row


def check_resumed(log: str, before: list[int]) -> bool:
  """The run resumed from the last complete checkpoint it found (or started afresh when
  there was none), as far as it got. Returns whether it resumed."""
  resumed = [int(s) for s in re.findall(r"resuming from the checkpoint of step (\d+)", log)]
  steps = [int(s) for s in re.findall(rf"step (\d+)/{TOTAL_STEPS} ", log)]
  if before:
    assert resumed in ([], [before[-1]]), (before, log[-3000:])
    if steps:
      assert resumed == [before[-1]] and steps[0] == before[-1] + 1, (before, log[-3000:])
  else:
    assert not resumed and steps[:1] in ([], [1]), log[-3000:]
  return bool(resumed)


@pytest.fixture(scope="module")
def reference(demo_dir, tmp_path_factory):
  """One uninterrupted run of the main job (it also fills the compilation cache)."""
  base = tmp_path_factory.mktemp("faults")
  cache = base / "xla_cache"
  workdir = base / "reference"
  job = Job(main_command(workdir, demo_dir, cache), base / "reference.log")
  wait_for(lambda: logged_steps(workdir), job, "first step")
  first_step = time.monotonic()
  assert job.wait() == 0, job.log()[-4000:]
  losses = {r["step"]: r["loss"] for r in metric_writer.read_metrics(str(workdir))}
  assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
  return {"workdir": workdir, "cache": cache, "params": final_params(workdir), "losses": losses,
          "training_s": time.monotonic() - first_step}


def wait_for(condition, job: Job, what: str, timeout=300):
  deadline = time.monotonic() + timeout
  while not condition():
    if job.proc.poll() is not None:
      return False
    assert time.monotonic() < deadline, f"no {what} after {timeout} s: {job.log()[-3000:]}"
    time.sleep(0.02)
  return True


@pytest.mark.slow
def test_sigkill_at_random_moments_then_reruns_end_exactly_like_an_uninterrupted_run(
    reference, demo_dir, tmp_path):
  """Kills land in start-up, restore, steps and checkpoint saves (async, so the next steps
  run while one is written); every chain of reruns ends with the parameters of the
  uninterrupted run, bitwise. A run that finishes before its kill lands closes a chain;
  the next kill starts a new one in a fresh workdir."""
  kills = 12 if FULL else 2
  rng = random.Random(0)
  chains, resumed, landed, attempt = 0, 0, 0, 0
  workdir = None
  jobs = []
  try:
    while True:
      assert attempt <= 3 * kills, f"only {landed} of {kills} kills landed in {attempt} runs"
      if workdir is None:
        workdir = tmp_path / f"run{chains}"
      before, rows = complete_steps(workdir), len(logged_steps(workdir))
      job = Job(main_command(workdir, demo_dir, reference["cache"]),
                tmp_path / f"attempt{attempt}.log")
      jobs.append(job)
      if landed == kills:
        assert job.wait() == 0, job.log()[-4000:]
      else:
        if landed % 4 == 1:   # during start-up or the restore, mostly
          time.sleep(rng.uniform(0.0, 4.0))
        else:
          # A random moment of the training phase (from its first logged step to its
          # exit: steps, saves in the background, the wait for the last save). The first
          # kill comes just after step 2 * CHECKPOINT_EVERY + 1: by then the checkpoint
          # of step CHECKPOINT_EVERY is complete (a save waits for the one before it),
          # so a rerun resumes at least once.
          first, span = (2 * CHECKPOINT_EVERY + 1, 0.1) if landed == 0 else \
              (0, reference["training_s"])
          wait_for(lambda: any(s >= first for s in logged_steps(workdir)[rows:]), job,
                   f"step {first}")
          time.sleep(rng.uniform(0.0, span))
        if job.proc.poll() is None:
          landed += 1
          job.kill()
        else:   # it finished before the kill landed
          assert job.wait() == 0, job.log()[-4000:]
      attempt += 1
      resumed += check_resumed(job.log(), before)
      if job.proc.returncode == 0:   # a chain of reruns ends
        assert_same_run(workdir, reference)
        assert not [n for n in os.listdir(workdir / "checkpoints") if TMP_SUFFIX in n]
        chains, workdir = chains + 1, None
        if landed == kills:
          break
  finally:
    for job in jobs:
      if job.proc.poll() is None:
        job.kill()
      job.reap()
  assert resumed >= 1


def test_a_half_written_checkpoint_is_never_restored(reference, demo_dir, tmp_path):
  """The folder a kill during a save leaves (Orbax's temporary name, files cut short) is
  passed over for the last complete checkpoint, and rewritten when its step comes."""
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir"], workdir)
  *_, previous, last = complete_steps(workdir)
  folder = workdir / "checkpoints" / str(last)
  for item in ("state", "data"):
    os.rename(folder / item, folder / f"{item}{TMP_SUFFIX}")
  files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(files[-1], "r+b") as f:
    f.truncate(files[-1].stat().st_size // 2)
  os.rename(folder, folder.parent / f"{last}{TMP_SUFFIX}")

  job = Job(main_command(workdir, demo_dir, reference["cache"]), tmp_path / "rerun.log")
  assert job.wait() == 0, job.log()[-4000:]
  assert check_resumed(job.log(), [previous])
  assert_same_run(workdir, reference)
  assert last in complete_steps(workdir)
  assert not [n for n in os.listdir(workdir / "checkpoints") if TMP_SUFFIX in n]


@pytest.mark.parametrize("override, suggestion", [
    ("optim.learnig_rate=1", "--config.optim.learning_rate?"),
    ("totl_steps=3", "--config.total_steps?"),
    ("learning_rate=1", "--config.optim.learning_rate?"),      # right name, wrong group
    ("optm.warmup_steps=1", "--config.optim.warmup_steps?"),
    ("model.towers.txt.depth=6", "--config.model.towers.text.depth?"),
    ("lr=1", "its fields: batch_size, "),                      # nothing close: the fields
    ("total_steps.x=1", "config.total_steps is a value (int), not a group of fields"),
])
def test_a_misspelled_config_field_names_the_nearest_one(override, suggestion):
  argv = ["main", f"--config={ROOT}/configs/pretrain.py:demo", f"--config.{override}"]
  (message,) = preflight.misspelled_config_fields(argv)
  assert message.startswith(f"--config.{override.split('=')[0]}: ") and suggestion in message


def test_config_fields_that_exist_are_not_reported():
  argv = ["main", f"--config={ROOT}/configs/pretrain.py:demo", "--config.optim.learning_rate=1",
          "--config.model.towers.text.depth=6", "--config.data.dir=/x",
          "--noconfig.data.skip_corrupt"]
  assert preflight.misspelled_config_fields(argv) == []


def test_main_stops_on_a_misspelled_field_with_one_message_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  out = subprocess.run([sys.executable, "-m", "mujo_jax.main", "--config=configs/pretrain.py:demo",
                        f"--workdir={workdir}", "--config.optim.learnig_rate=1",
                        "--config.totl_steps=3"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 1
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert ("--config.optim.learnig_rate: config.optim has no field 'learnig_rate'; did you mean "
          "--config.optim.learning_rate?") in out.stderr
  assert "did you mean --config.total_steps?" in out.stderr
  assert not workdir.exists()


def _snapshot(workdir):
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
          if p.is_file()}


def test_main_refuses_a_workdir_of_another_model_and_changes_nothing(reference, demo_dir,
                                                                     tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir"], workdir)
  before = _snapshot(workdir)
  out = subprocess.run(main_command(workdir, demo_dir, reference["cache"],
                                    "--config.model.width=64", "--config.model.depth=2"),
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  config_json = workdir / "config.json"
  assert f"model.depth: 1 in {config_json}, 2 in this config" in out.stderr
  assert f"model.width: 32 in {config_json}, 64 in this config" in out.stderr
  assert "--config.model.depth=1 --config.model.width=32" in out.stderr
  assert _snapshot(workdir) == before


def tiny_config(data_dir, **overrides):
  config = pretrain.get_config("demo")
  config.data.dir = str(data_dir)
  config.data.build_demo_if_missing = False
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, embed_dim=32)
  config.total_steps = 12
  for key, value in overrides.items():
    config[key] = value
  return config


def fake_run(workdir, config, steps=(4, 8)):
  """A workdir as a run of `config` leaves it: config.json and checkpoint folders."""
  for step in steps:
    os.makedirs(workdir / "checkpoints" / str(step))
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


def test_a_model_change_is_refused_before_config_json_is_rewritten(demo_dir, tmp_path):
  fake_run(tmp_path, tiny_config(demo_dir))
  written = (tmp_path / "config.json").read_bytes()
  changed = tiny_config(demo_dir)
  changed.model.towers.text.depth = 3
  changed.model.scan_layers = True     # stacks each tower's blocks: another parameter tree
  with pytest.raises(preflight.SetupError) as error:
    preflight.prepare_workdir(changed, str(tmp_path))
  message = str(error.value)
  assert f"{tmp_path} holds checkpoints (steps 4..8) of another model" in message
  assert "model.scan_layers: False in" in message and "model.towers.text.depth: None in" in message
  assert "Nothing was written" in message
  assert (tmp_path / "config.json").read_bytes() == written


def test_run_settings_and_compute_options_may_change_on_resume(demo_dir, tmp_path):
  fake_run(tmp_path, tiny_config(demo_dir))
  resumed = tiny_config(demo_dir, total_steps=40, log_every=7, batch_size=16)
  resumed.model.remat = "full"
  resumed.optim.learning_rate = 3e-4
  changed = preflight.check_workdir(resumed, str(tmp_path))
  assert changed == {"batch_size": (128, 16), "log_every": (20, 7), "model.remat": ("none", "full"),
                     "optim.learning_rate": (1e-3, 3e-4), "total_steps": (12, 40)}
  preflight.prepare_workdir(resumed, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 40


def test_a_job_of_another_kind_is_refused_in_a_pretraining_workdir(demo_dir, tmp_path):
  fake_run(tmp_path, tiny_config(demo_dir))
  written = (tmp_path / "config.json").read_bytes()
  with pytest.raises(preflight.SetupError, match="checkpoints of a 'pretrain' job .* 'finetune'"):
    preflight.prepare_workdir(finetune_config.get_config("npz"), str(tmp_path))
  assert (tmp_path / "config.json").read_bytes() == written


def test_a_data_dir_without_dataset_info_stops_before_the_workdir_is_written(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  workdir = tmp_path / "run"
  with pytest.raises(preflight.SetupError) as error:
    preflight.prepare_workdir(tiny_config(data), str(workdir))
  assert f"{data}/{records.INFO_FILENAME} not found" in str(error.value)
  assert f"--out_dir={data}" in str(error.value)   # how to make one
  assert not workdir.exists()


def test_a_dataset_of_another_format_version_stops_before_the_workdir_is_written(demo_dir,
                                                                                 tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  info = json.loads(open(os.path.join(demo_dir, records.INFO_FILENAME)).read())
  info["format_version"] = records.FORMAT_VERSION + 1
  (data / records.INFO_FILENAME).write_text(json.dumps(info, indent=2))
  workdir = tmp_path / "run"
  with pytest.raises(preflight.SetupError) as error:
    preflight.prepare_workdir(tiny_config(data), str(workdir))
  message = str(error.value)
  assert f"{data}/{records.INFO_FILENAME}" in message
  assert f"format_version {records.FORMAT_VERSION + 1}" in message
  assert not workdir.exists()
