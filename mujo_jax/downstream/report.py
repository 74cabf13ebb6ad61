"""Writes a downstream evaluation's results: JSON rows, a mean ± std table and two plots.

  results.json        dataset, split, window counts, per-split class counts and the classes
                      without test windows (`coverage`), notes, and one row per run (mode,
                      fraction, seed, macro_f1, accuracy, per-class F1 (null: no test window),
                      confusion matrix, ...)
  results.md          macro F1 and accuracy, mean ± std over seeds, per mode and fraction; the
                      classes macro F1 leaves out and the notes
  confusion.png       the best mode at the largest fraction, confusion summed over seeds
  f1_vs_fraction.png  macro F1 (mean ± std) against the label fraction, one line per mode
"""

from __future__ import annotations

import collections
import io

import numpy as np

from mujo_jax import storage


def summary(rows: list[dict]) -> list[dict]:
  """(mode, fraction) -> mean/std of macro F1 and accuracy over seeds, in run order."""
  groups = collections.OrderedDict()
  for r in rows:
    groups.setdefault((r["mode"], r["fraction"]), []).append(r)
  out = []
  for (mode, fraction), group in groups.items():
    f1 = np.array([r["macro_f1"] for r in group])
    acc = np.array([r["accuracy"] for r in group])
    out.append(dict(mode=mode, fraction=fraction, seeds=len(group),
                    macro_f1_mean=float(f1.mean()), macro_f1_std=float(f1.std()),
                    accuracy_mean=float(acc.mean()), accuracy_std=float(acc.std())))
  return out


def markdown(results: dict) -> str:
  lines = [f"# {results['dataset']}: macro F1 on the test subjects",
           "",
           f"pretrained: {results['pretrained'] or 'none (from scratch only)'}  ",
           f"windows: {results['windows']}  ",
           f"test subjects: {results['split']['test']}"]
  absent = results.get("classes_without_test_windows")
  if absent:
    lines[-1] += "  "
    lines.append(f"**macro F1 averages over the {len(results['scored_classes'])} of "
                 f"{len(results['class_names'])} classes with test windows; left out (no test "
                 f"window, counts in the notes): {', '.join(absent)}**  ")
  lines += ["",
            "| mode | label fraction | seeds | macro F1 | accuracy |",
            "| --- | --- | --- | --- | --- |"]
  for s in summary(results["rows"]):
    fraction = "none" if s["mode"] == "zero_shot" else f"{s['fraction']:g}"
    lines.append(f"| {s['mode']} | {fraction} | {s['seeds']} | "
                 f"{s['macro_f1_mean']:.3f} ± {s['macro_f1_std']:.3f} | "
                 f"{s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f} |")
  if results.get("notes"):
    lines += ["", "Notes:"] + [f"- {n}" for n in results["notes"]]
  return "\n".join(lines) + "\n"


def best_trained(rows: list[dict]) -> tuple[str, float]:
  """The mode with the best mean macro F1 at the largest label fraction."""
  trained = [s for s in summary(rows) if s["mode"] != "zero_shot"] or summary(rows)
  top = max(s["fraction"] for s in trained)
  best = max((s for s in trained if s["fraction"] == top), key=lambda s: s["macro_f1_mean"])
  return best["mode"], best["fraction"]


def plot_confusion(path: str, results: dict) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  mode, fraction = best_trained(results["rows"])
  confusion = sum(np.array(r["confusion"]) for r in results["rows"]
                  if r["mode"] == mode and r["fraction"] == fraction)
  names = results["class_names"]
  size = max(5, 0.35 * len(names) + 3)
  fig, ax = plt.subplots(figsize=(size, size))
  rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
  ax.set_yticks(range(len(names)), names, fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"{results['dataset']}: {mode}, fraction {fraction:g} (rows normalised)")
  fig.tight_layout()
  _save_png(fig, path)
  plt.close(fig)


def plot_f1_vs_fraction(path: str, results: dict) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4))
  stats = summary(results["rows"])
  for mode in dict.fromkeys(s["mode"] for s in stats):
    points = sorted((s["fraction"], s["macro_f1_mean"], s["macro_f1_std"])
                    for s in stats if s["mode"] == mode)
    if mode == "zero_shot":
      ax.axhline(points[0][1], linestyle="--", color="gray", label="zero_shot")
      continue
    f, m, sd = map(np.array, zip(*points))
    ax.errorbar(f, m, yerr=sd, marker="o", capsize=3, label=mode)
  ax.set_xscale("log")
  ax.set_xlabel("fraction of training labels")
  ax.set_ylabel("macro F1 (test)")
  ax.set_ylim(0, 1.02)
  ax.set_title(results["dataset"])
  ax.legend()
  fig.tight_layout()
  _save_png(fig, path)
  plt.close(fig)


def _save_png(fig, path: str) -> None:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  storage.write_bytes(path, buffer.getvalue())


def write_all(workdir: str, results: dict) -> list[str]:
  """results.json, results.md and the plots into workdir (local or gs://), each atomically."""
  paths = [storage.join(workdir, n) for n in
           ("results.json", "results.md", "confusion.png", "f1_vs_fraction.png")]
  storage.write_json(paths[0], results, indent=1)
  storage.write_text(paths[1], markdown(results))
  plot_confusion(paths[2], results)
  plot_f1_vs_fraction(paths[3], results)
  return paths
