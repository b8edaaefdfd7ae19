"""Training: the trainer (cluster -> train -> evaluate -> save), checkpoints and resume, precision,
optimiser and stopping."""
