"""Two JAX processes x 4 CPU devices on localhost, running the real main job as TPU hosts do.

One module-scoped scenario, since every launch compiles: a 1-process x 8-device
reference run, then the same job as 2 processes x 4 devices that is killed
(SIGKILL) after a checkpoint, rerun (resumes), preempted (SIGTERM to process 1
alone), and rerun to the end. The 2-process run must give the reference's loss
curve, eval metrics and final parameters. The 2-process launches share one XLA
compilation cache, so the reruns load their programs instead of compiling them.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mujo_jax import checkpoint
from mujo_jax import metric_writer

ROOT = os.path.join(os.path.dirname(__file__), "..")
# Few steps: a 2-process step waits on cross-process collectives, so each one is slow on CPU.
# Every step logged: a row then holds one step's loss wherever a preemption stopped the run.
STEPS = 10
CHECKPOINT_EVERY = 2
JOB = ["--config=configs/pretrain.py:demo", f"--config.total_steps={STEPS}",
       "--config.log_every=1", f"--config.eval_every={STEPS}",
       f"--config.checkpoint_every={CHECKPOINT_EVERY}",
       "--config.batch_size=16", "--config.eval_batch_size=16", "--config.data.num_workers=1",
       "--config.model.depth=1", "--config.model.width=32", "--config.model.mlp_dim=64",
       "--config.model.num_heads=2", "--config.model.embed_dim=32",
       "--config.data.modality_dropout=0.2"]

pytestmark = pytest.mark.slow


def _sum_of_learning_rates() -> float:
  """Sum of the schedule's learning rates over the job's steps (configs/pretrain.py:demo)."""
  from configs import pretrain  # pylint: disable=import-outside-toplevel
  from mujo_jax import train  # pylint: disable=import-outside-toplevel
  config = pretrain.get_config("demo")
  config.total_steps = STEPS
  _, schedule = train.make_optimizer(config)
  return float(sum(schedule(s) for s in range(STEPS)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Job:
  """One launch: `processes` copies of the main command, each with its own log file."""

  def __init__(self, data_dir, workdir, logs, processes, devices, cache_dir=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    port = _free_port()
    self.logs = [logs / f"process{i}-{time.monotonic_ns()}.log" for i in range(processes)]
    self.procs = []
    for i in range(processes):
      cmd = [sys.executable, "-m", "mujo_jax.main", *JOB, f"--config.data.dir={data_dir}",
             f"--workdir={workdir}"]
      if cache_dir:
        cmd.append(f"--config.compilation_cache_dir={cache_dir}")
      if processes > 1:
        cmd += ["--jax_distributed", f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}", f"--process_id={i}"]
      with open(self.logs[i], "w") as log:
        self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log))

  def log(self, i) -> str:
    return self.logs[i].read_text()

  def wait(self, timeout=600) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in self.procs:
      codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    return codes

  def wait_for(self, condition, what, timeout=600):
    deadline = time.monotonic() + timeout
    while not condition():
      if any(p.poll() is not None for p in self.procs):
        raise AssertionError(f"a process ended before {what}:\n" + self.log(0)[-3000:]
                             + "\n" + self.log(len(self.procs) - 1)[-3000:])
      if time.monotonic() > deadline:
        raise AssertionError(f"timed out waiting for {what}")
      time.sleep(0.05)

  def kill(self, sig=signal.SIGKILL):
    for p in self.procs:
      if p.poll() is None:
        p.send_signal(sig)
    self.wait()


def _checkpoints(workdir) -> list[int]:
  path = workdir / "checkpoints"
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if path.exists() else []


def _validation_line(log: str) -> str:
  lines = re.findall(rf"step {STEPS} validation: (.*)", log)
  assert lines, log[-3000:]
  return lines[-1]


@pytest.fixture(scope="module")
def runs(demo_dir, tmp_path_factory):
  base = tmp_path_factory.mktemp("multiprocess")
  data = demo_dir
  cache = base / "xla_cache"   # 2 x 4 programs only: the reference's mesh is another
  logs = base / "logs"
  logs.mkdir()
  timings = {}

  start = time.monotonic()
  reference = Job(data, base / "one", logs, processes=1, devices=8)
  assert reference.wait() == [0], reference.log(0)[-3000:]
  timings["1 process x 8 devices"] = time.monotonic() - start

  two = base / "two"
  start = time.monotonic()
  killed = Job(data, two, logs, processes=2, devices=4, cache_dir=cache)
  killed.wait_for(lambda: _checkpoints(two), "the first checkpoint")
  killed.kill(signal.SIGKILL)
  killed_at = _checkpoints(two)[-1]
  timings["2x4, until SIGKILL"] = time.monotonic() - start

  start = time.monotonic()
  preempted = Job(data, two, logs, processes=2, devices=4, cache_dir=cache)
  preempted.wait_for(lambda: re.search(r"step \d+/", preempted.log(1)) is not None,
                     "process 1's first progress line after resuming")
  preempted.procs[1].send_signal(signal.SIGTERM)
  codes = preempted.wait()
  timings["2x4, resumed until SIGTERM"] = time.monotonic() - start

  start = time.monotonic()
  final = Job(data, two, logs, processes=2, devices=4, cache_dir=cache)
  final_codes = final.wait()
  timings["2x4, resumed to the end"] = time.monotonic() - start
  print("multi-process test launches (s):", json.dumps({k: round(v) for k, v in timings.items()}))
  return dict(base=base, reference=reference, killed_at=killed_at, preempted=preempted,
              preempted_codes=codes, final=final, final_codes=final_codes)


def test_processes_resume_after_a_kill(runs):
  killed_at = runs["killed_at"]
  assert CHECKPOINT_EVERY <= killed_at < STEPS
  for i in range(2):
    assert f"resuming from the checkpoint of step {killed_at}" in runs["preempted"].log(i)


def test_sigterm_to_one_process_makes_both_save_the_same_step_and_exit(runs):
  assert runs["preempted_codes"] == [0, 0], runs["preempted"].log(0)[-3000:]
  steps = [re.findall(r"stopped early at step (\d+)", runs["preempted"].log(i)) for i in range(2)]
  assert steps[0] and steps[0] == steps[1], steps
  stopped = int(steps[0][0])
  assert runs["killed_at"] < stopped < STEPS
  for i in range(2):
    assert f"resuming from the checkpoint of step {stopped}" in runs["final"].log(i)


def test_two_processes_train_exactly_like_one(runs):
  assert runs["final_codes"] == [0, 0], runs["final"].log(1)[-3000:]
  one = {r["step"]: r for r in metric_writer.read_metrics(str(runs["base"] / "one"))
         if "loss" in r}
  two = [r for r in metric_writer.read_metrics(str(runs["base"] / "two")) if "loss" in r]
  assert {r["step"] for r in two} == set(one) == set(range(1, STEPS + 1))
  for row in two:   # every logged step, also those logged again after the kill
    for key in [k for k in one[row["step"]] if k.startswith("loss")]:
      assert row[key] == pytest.approx(one[row["step"]][key], rel=1e-5, abs=1e-6), (row["step"], key)
  _, params_one, step_one = checkpoint.load_pretrained(str(runs["base"] / "one"))
  _, params_two, step_two = checkpoint.load_pretrained(str(runs["base"] / "two"))
  assert step_one == step_two == STEPS
  two_leaves = dict(_leaves(params_two))
  for path, a in _leaves(params_one):
    b = two_leaves[path]
    if path.endswith("attention/key/bias"):
      # Softmax ignores a bias added to every key: its gradient is 0 up to rounding, which
      # Adam scales up to steps of about the learning rate, so these hold summation-order
      # noise in any two runs, bounded by the sum of the learning rates so far.
      assert np.abs(a).max() < _sum_of_learning_rates() and np.abs(b).max() < \
          _sum_of_learning_rates(), path
      continue
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)


def test_eval_metrics_are_identical_on_both_processes_and_match_one_process(runs):
  lines = [_validation_line(runs["final"].log(i)) for i in range(2)]
  assert lines[0] == lines[1] == _validation_line(runs["reference"].log(0))


def test_each_process_keeps_its_own_iterator_state_and_only_process_0_writes_logs(runs):
  two = runs["base"] / "two"
  assert sorted(os.listdir(two / "checkpoints" / str(STEPS) / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  rows = metric_writer.read_metrics(str(two))
  final = [r for r in rows if r["step"] == STEPS and "loss" in r]
  assert len(final) == 1   # one writer: process 1 would have doubled every row
  assert len([n for n in os.listdir(two) if n.startswith("events.out.tfevents")]) == 3
  assert re.search(rf"step {STEPS}/{STEPS} ", runs["final"].log(1))   # process 1 logs progress


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f"{prefix}/{k}")
  else:
    yield prefix, np.asarray(tree)


def test_explicit_cluster_flags_need_jax_distributed(tmp_path):
  out = subprocess.run([sys.executable, "-m", "mujo_jax.main", "--config=configs/pretrain.py:demo",
                        f"--workdir={tmp_path}", "--num_processes=2", "--process_id=0"],
                       cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0
  assert "--coordinator_address, --num_processes and --process_id need --jax_distributed" \
      in out.stderr
  assert not os.listdir(tmp_path)   # stopped before writing anything
