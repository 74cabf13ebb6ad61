"""Helpers shared by configs (big_vision's `parse_arg` idea)."""

import ast


def parse_arg(arg: str | None, lazy: bool = False, **defaults):
  """Parses a config argument like "demo,batch=128" against named defaults.

  A bare word sets that boolean default to True ("demo" -> demo=True); key=value
  pairs are parsed as Python literals, falling back to strings; unknown keys are
  an error unless `lazy`.
  """
  settings = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults and not lazy:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    if not eq:
      settings[key] = True
      continue
    try:
      settings[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      settings[key] = value
  return settings
