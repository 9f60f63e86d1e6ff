"""Layers: drop-in twins of their torch.nn namesakes, computed by cnnkit's kernels."""
