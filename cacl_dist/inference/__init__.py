"""Inference: one loader (checkpoints and exports, weights only), features, the shared ranking, export writers."""
