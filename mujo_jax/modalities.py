"""The four modalities, in the one order that masks, pairs and towers all use."""

MODALITIES = ("imu", "pose", "video", "text")
