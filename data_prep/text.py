"""Exercise descriptions and their tokenisation.

Text is tokenised once, at conversion time, with the all-MiniLM-L6-v2 BERT
WordPiece tokenizer (vocab 30,522) so the training job never runs a tokenizer.
The tokenizer itself lives in `mujo_jax.tokenizer` (evaluation tokenises class
names with it); its names are re-exported here for the converters.
"""

from __future__ import annotations

import functools

from mujo_jax import tokenizer as tokenizer_lib

TOKENIZER_NAME = tokenizer_lib.TOKENIZER_NAME
tokenizer_dir = tokenizer_lib.tokenizer_dir
load_tokenizer = tokenizer_lib.load_tokenizer
tokenize = tokenizer_lib.tokenize


def check_lengths(tokenizer, texts, max_len: int) -> None:
  """Raises ValueError naming the first text whose ids ([CLS] and [SEP] included) do not fit
  `max_len`: `tokenize` would cut it, and a converter must not change a text silently."""
  for t in texts:
    n = len(tokenizer(t)["input_ids"])
    if n > max_len:
      raise ValueError(f"text {t!r} is {n} token ids, more than text_len {max_len}; raise "
                       f"text_len")


@functools.cache
def _process_tokenizer():
  return load_tokenizer()


def encode(texts, text_len: int):
  """`check_lengths` then `tokenize`, with one tokenizer per process: for converters that
  write a text per window from their worker processes (e.g. `motion_text` captions)."""
  tokenizer = _process_tokenizer()
  check_lengths(tokenizer, texts, text_len)
  return tokenize(tokenizer, texts, text_len)


# Several phrasings per MM-Fit exercise: the chapter-title-like first entry and
# descriptions in the style of FiMAD's generated exercise descriptions.
DESCRIPTIONS = {
    "squats": (
        "squats",
        "Stand with feet shoulder-width apart, bend the knees and hips to lower the body, then stand back up.",
        "Bodyweight squat: push the hips back and down until the thighs are parallel to the floor.",
        "A person repeatedly squats down and rises, arms held out in front for balance.",
    ),
    "pushups": (
        "push-ups",
        "From a plank position, lower the chest to the floor by bending the elbows, then push back up.",
        "Push-up: hands under the shoulders, body straight, arms bend and extend.",
        "A person lying face down presses the body up and down with the arms.",
    ),
    "dumbbell_shoulder_press": (
        "dumbbell shoulder press",
        "Hold dumbbells at shoulder height and press them overhead until the arms are straight.",
        "Overhead press: both arms push the weights up above the head and lower them back to the shoulders.",
        "Standing shoulder press with a dumbbell in each hand.",
    ),
    "lunges": (
        "lunges",
        "Step forward with one leg and lower the hips until both knees are bent at about ninety degrees.",
        "Alternating forward lunges, pushing back to standing after each step.",
        "A person steps forward into a deep lunge and returns, switching legs.",
    ),
    "dumbbell_rows": (
        "dumbbell rows",
        "Bent over with a flat back, pull the dumbbell up towards the hip, then lower it with control.",
        "One-arm row: the elbow drives back while the torso stays leaning forward.",
        "Bent-over row pulling a weight up to the ribs.",
    ),
    "situps": (
        "sit-ups",
        "Lie on the back with knees bent and curl the upper body up towards the knees, then lower it.",
        "Sit-up: the torso rises from the floor to upright and rolls back down.",
        "A person lying on their back repeatedly sits up.",
    ),
    "tricep_extensions": (
        "triceps extensions",
        "Hold a dumbbell overhead and lower it behind the head by bending the elbows, then extend the arms.",
        "Overhead triceps extension: upper arms stay still, forearms move up and down behind the head.",
        "Standing triceps extension with a weight held above the head.",
    ),
    "dumbbell_biceps_curls": (
        "biceps curls",
        "With the elbows at the sides, curl the dumbbells up to the shoulders and lower them slowly.",
        "Biceps curl: the forearms bend upward while the upper arms stay still.",
        "A person curls a pair of dumbbells while standing.",
    ),
    "lateral_shoulder_raises": (
        "lateral raises",
        "Raise the dumbbells out to the sides until the arms are level with the shoulders, then lower them.",
        "Lateral shoulder raise: straight arms lift sideways to shoulder height.",
        "Standing side raises with light weights.",
    ),
    "jumping_jacks": (
        "jumping jacks",
        "Jump while spreading the legs and raising the arms overhead, then jump back to the start.",
        "Jumping jacks: arms and legs open and close together in a rhythmic jump.",
        "A person does star jumps, clapping the hands above the head.",
    ),
}
