"""Motion -> virtual IMU simulation: skeletons, motion synthesis, the IMU simulator
and the synthetic video features of the demo data."""
