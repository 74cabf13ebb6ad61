"""Which classes the windows kept, per split, and what to do about the ones they lost.

Windowing drops windows with mixed or null labels and recordings shorter than a window
(`windows.make_windows`). A class whose segments are shorter than a window (postural transitions
of a few seconds beside 5 s windows, say) can lose every window. Such a class cannot be scored:
macro F1 averages over the classes with at least one test window only (`finetune.scores`), and the
classes left out are named here, with their counts before and after windowing, in results.json,
results.md and the log. A class that windowing removed mostly (`MOSTLY_DROPPED`) gets a
suggested window length (`suggest_window`).

Counts of a class in a split (its subjects), `class_counts`:
  segments          contiguous labelled runs of the class (within one recording)
  seconds           its labelled duration
  median_segment_s  the median run length (None without runs)
  windows_before    candidate windows that held any of its samples, before the drops
  windows_after     the windows labelled with it
  kept_fraction     the share of its labelled samples inside a kept window of the class
"""

from __future__ import annotations

import math

import numpy as np

from mujo_jax.downstream import windows as windows_lib

SPLITS = ("train", "val", "test")
# A class keeping less than this share of its labelled data in windows is "mostly dropped".
MOSTLY_DROPPED = 0.5


def class_counts(windows: windows_lib.Windows, subjects, rate_hz: float) -> dict[str, dict]:
  """Class name -> counts (module docstring) over `subjects`."""
  subjects = set(int(s) for s in subjects)
  y = windows.y[np.isin(windows.subject, list(subjects))]
  out = {}
  for c, name in enumerate(windows.class_names):
    tallies = [t for (s, k), t in windows.tally.items() if k == c and s in subjects]
    lengths = [n for t in tallies for n in t.segment_samples]
    samples = sum(lengths)
    after = int((y == c).sum())
    out[name] = {
        "segments": len(lengths),
        "seconds": round(samples / rate_hz, 2),
        "median_segment_s": round(float(np.median(lengths)) / rate_hz, 2) if lengths else None,
        # The appended null class has no segments: its windows are all it has.
        "windows_before": sum(t.windows_before for t in tallies) if tallies else after,
        "windows_after": after,
        "kept_fraction": (round(sum(t.samples_in_windows for t in tallies) / samples, 3)
                          if samples else None),
    }
  return out


def suggest_window(median_segment_s: float) -> tuple[float, float] | None:
  """(window_s, stride_s) that keep a window of every segment at least `median_segment_s` long.

  A segment of L s holds a whole window of W s on a grid of stride S, wherever the grid starts,
  when W + S <= L. With the stride half the window (the default's ratio) that is W <= 2 L / 3;
  W is rounded down to 0.5 s (to 0.1 s under 1 s) so that it reads as a setting, not a
  measurement. None when even 0.1 s does not fit.
  """
  window = 2.0 * median_segment_s / 3.0
  step = 0.5 if window >= 1.0 else 0.1
  window = round(math.floor(window / step + 1e-9) * step, 1)
  if window <= 0:
    return None
  return window, window / 2


def summarize(windows: windows_lib.Windows, split: dict[str, tuple[int, ...]],
              config: windows_lib.WindowConfig) -> tuple[dict, list[str]]:
  """(results.json fields, notes): per-split class counts, the classes without test (or training)
  windows, and the mostly dropped classes with a suggested window. The notes are the sentences
  that say so (results.json `notes`, results.md, and the log as warnings)."""
  all_subjects = {s for s, _ in windows.tally} | set(np.unique(windows.subject).tolist())
  counts = {"all": class_counts(windows, all_subjects, config.rate_hz)}
  for part in SPLITS:
    counts[part] = class_counts(windows, split[part], config.rate_hz)
  names = list(windows.class_names)
  absent = [n for n in names if not counts["test"][n]["windows_after"]]
  untrained = [n for n in names if not counts["train"][n]["windows_after"]]
  mostly_dropped = {}
  for name in names:
    total = counts["all"][name]
    if total["kept_fraction"] is None or total["kept_fraction"] >= MOSTLY_DROPPED:
      continue
    suggestion = suggest_window(total["median_segment_s"])
    mostly_dropped[name] = dict(
        kept_fraction=total["kept_fraction"], windows_before=total["windows_before"],
        windows_after=total["windows_after"], median_segment_s=total["median_segment_s"],
        suggested_window_s=suggestion[0] if suggestion else None,
        suggested_stride_s=suggestion[1] if suggestion else None)

  notes = []
  if absent:
    notes.append(
        f"{len(absent)} of {len(names)} classes have no test window and are left out of macro "
        f"F1 and per-class F1 (absent, not 0): " + "; ".join(
            f"{n} (windows before -> after windowing: test {counts['test'][n]['windows_before']}"
            f" -> {counts['test'][n]['windows_after']}, all subjects "
            f"{counts['all'][n]['windows_before']} -> {counts['all'][n]['windows_after']})"
            for n in absent))
  if untrained:
    notes.append(f"{len(untrained)} classes have no training window and cannot be predicted by "
                 f"the trained modes: {', '.join(untrained)}")
  for name, d in mostly_dropped.items():
    note = (f"WINDOWING REMOVED MOST OF CLASS {name!r}: {d['kept_fraction']:.0%} of its labelled "
            f"data is in a kept window ({d['windows_before']} windows touched it, "
            f"{d['windows_after']} kept); its segments last {d['median_segment_s']} s (median) "
            f"against {config.window_s:g} s windows every {config.stride_s:g} s. ")
    if d["suggested_window_s"] is None:
      note += "Its segments are too short for any window."
    else:
      note += (f"--config.data.window.window_s={d['suggested_window_s']:g} "
               f"--config.data.window.stride_s={d['suggested_stride_s']:g} would keep a window of "
               f"every segment at least the median long (the IMU encoder takes "
               f"{config.window_s:g} s windows: a shorter window needs an encoder with "
               f"model.imu_len={int(round(d['suggested_window_s'] * config.rate_hz))}).")
    notes.append(note)
  fields = {
      "scored_classes": [n for n in names if n not in absent],
      "classes_without_test_windows": absent,
      "classes_without_train_windows": untrained,
      "classes_mostly_dropped": mostly_dropped,
      "class_windows": counts,
  }
  return fields, notes
