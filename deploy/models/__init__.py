"""Models as data: model specs (models/<name>.yaml) and their checkpoints."""
