"""Training entry points: thin absl apps over ml_collections configs in train/configs/."""
