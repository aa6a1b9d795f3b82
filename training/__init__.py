"""Training: one LightGBM pipeline for the click, send-hour and variant models (models issue)."""
