"""Tasks: where the data comes from and how a model is scored (MNIST ships; users bring their own)."""
