"""The four modalities and the batch keys that hold them: the one definition every module uses.

`MODALITIES` is the order that masks (`modality_mask[:, i]`), pairs and towers all use.
"""

MODALITIES = ("imu", "pose", "video", "text")
# The batch key holding each modality's input array.
INPUT_KEYS = {"imu": "imu", "pose": "pose", "video": "video", "text": "text_ids"}
# The per-example array fields of a record and a batch, in MODALITIES order.
ARRAY_KEYS = tuple(INPUT_KEYS[m] for m in MODALITIES)
# Everything the model reads from a batch: the arrays, the text lengths and which modalities
# each example has.
MODEL_INPUTS = ARRAY_KEYS + ("text_len", "modality_mask")
