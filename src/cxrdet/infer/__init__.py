"""Inference: test-time augmentation views and batched TTA prediction."""
