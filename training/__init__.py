"""Training: one LightGBM pipeline for the click, send-hour and variant models, their evaluation, the
off-policy estimator, and what serving needs of them (training.inference)."""
