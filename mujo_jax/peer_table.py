r"""Runs the whole peer table on UTD-MHAD, one `mujo_jax.main` process per row, and writes it.

  python -m mujo_jax.peer_table --workdir=workdirs/peers [--seeds=3] [--epochs=100] [--jobs=2]
      [--methods=supervised_imu,...] [--semi=true]

Each row is `python -m mujo_jax.main --config=configs/peers.py:method=M,seeds=S,epochs=E
--workdir=WORKDIR/M` (its stages resume where they stopped); with --semi, each method of
SEMI_METHODS is then run again with `semi` in the same workdir, which adds the label fractions
1%, 5%, 10% and reuses the finished stages. `--jobs` rows run at once, each on its share of the
cores. WORKDIR/table.md and table.json gather every row's results.json.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

from mujo_jax import console
from mujo_jax import storage

METHODS = ("supervised_imu", "supervised_mm", "simclr_imu", "cmc", "cmc_cmkm", "mujo", "mujo_cnn")
SEMI_METHODS = ("supervised_mm", "cmc_cmkm")

flags.DEFINE_string("workdir", None, "Root of the rows' workdirs.", required=True)
flags.DEFINE_list("methods", list(METHODS), "Rows to run.")
flags.DEFINE_integer("seeds", 3, "Seeds per row.")
flags.DEFINE_integer("epochs", 100, "Epochs of every stage (the paper's: 100).")
flags.DEFINE_integer("jobs", 1, "Rows run at once; the cores are split between them.")
flags.DEFINE_bool("semi", True, "Also the label fractions 1%, 5%, 10% of SEMI_METHODS.")
flags.DEFINE_string("config", "configs/peers.py", "The peers config file.")
FLAGS = flags.FLAGS


def row_command(method: str, semi: bool) -> list[str]:
  arg = f"method={method},seeds={FLAGS.seeds},epochs={FLAGS.epochs}" + (",semi" if semi else "")
  return [sys.executable, "-m", "mujo_jax.main", f"--config={FLAGS.config}:{arg}",
          f"--workdir={storage.join(FLAGS.workdir, method)}"]


def run_rows(rows: list[tuple[str, bool]]) -> None:
  """Runs the rows, `--jobs` at a time, each job pinned to its own share of the cores."""
  cores = sorted(os.sched_getaffinity(0))
  jobs = max(1, min(FLAGS.jobs, len(cores)))
  slots = queue.Queue()
  for i in range(jobs):
    slots.put(set(cores[i::jobs]))

  def run(row):
    method, semi = row
    log = storage.join(FLAGS.workdir, f"{method}{'_semi' if semi else ''}.log")
    start = time.time()
    mine = slots.get()
    try:
      with open(log, "w") as f:
        code = subprocess.call(row_command(method, semi), stdout=f, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: os.sched_setaffinity(0, mine))
    finally:
      slots.put(mine)
    logging.info("%s%s: exit %d after %.0f s (log %s)", method, " semi" if semi else "", code,
                 time.time() - start, log)
    return code

  with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    codes = list(pool.map(run, rows))
  failed = [r for r, c in zip(rows, codes) if c]
  if failed:
    raise SystemExit(f"rows failed: {failed}; see their logs in {FLAGS.workdir}")


def table(workdir: str, methods) -> tuple[str, list[dict]]:
  rows = []
  for method in methods:
    path = storage.join(workdir, method, "results.json")
    if storage.exists(path):
      rows += storage.read_json(path)["rows"]
  lines = ["| method | evaluation | labels | accuracy % | macro F1 % | paper accuracy % |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    paper = f"{r['paper_accuracy']:.2f}" if r.get("paper_accuracy") else "-"
    lines.append(f"| {r['method']} | {r['evaluation']} | {r['label_fraction']:.0%} | "
                 f"{r['accuracy_mean']:.2f} +- {r['accuracy_std']:.2f} | "
                 f"{r['macro_f1_mean']:.2f} +- {r['macro_f1_std']:.2f} | {paper} |")
  return "\n".join(lines) + "\n", rows


def main(argv):
  del argv
  console.setup()
  unknown = sorted(set(FLAGS.methods) - set(METHODS))
  if unknown:
    raise app.UsageError(f"--methods: unknown {unknown}; known: {METHODS}")
  storage.makedirs(FLAGS.workdir)
  start = time.time()
  rows = [(m, False) for m in FLAGS.methods]
  run_rows(rows)
  if FLAGS.semi:
    run_rows([(m, True) for m in SEMI_METHODS if m in FLAGS.methods])
  text, rows = table(FLAGS.workdir, FLAGS.methods)
  storage.write_text(storage.join(FLAGS.workdir, "table.md"), text)
  storage.write_json(storage.join(FLAGS.workdir, "table.json"),
                     {"rows": rows, "seconds": round(time.time() - start, 1)})
  print(text)
  logging.info("the table took %.0f s; %s", time.time() - start,
               storage.join(FLAGS.workdir, "table.md"))


if __name__ == "__main__":
  app.run(main)
