"""The error a source reader raises for bad input: its message names the clip and the file."""


class SourceError(ValueError):
  """Bad input: the message names the clip (or recording) and the file."""


def clip_error(clip_id: str, path: str, what: str) -> SourceError:
  return SourceError(f"clip {clip_id!r} ({path}): {what}")
