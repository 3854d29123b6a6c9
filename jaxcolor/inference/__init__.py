"""Inference: image in -> prediction out (inputs, predictor, Model, loading)."""
