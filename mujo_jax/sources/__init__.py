"""Raw sources: readers of public datasets' official on-disk layouts.

One module per dataset format reads its files into numpy arrays with physical units (m/s^2,
rad/s, metres, or the unit the format stores, stated by the module) and clocks (sample times or
rates), and checks what the format's documentation leaves open. The pretraining converters
(data_prep) and the downstream adapters (mujo_jax.downstream) both read through these modules,
so a dataset's files mean the same thing to both. `recording` holds the in-memory labelled
`Recordings` that downstream sources produce, `resampling` the one way real IMU is put on a
uniform time grid, `geometry` the turn to a +z-up world frame. Nothing here imports data_prep.
"""
