"""An elastic model of one's own, brought to elastic-deploy as a plugin (no edit of elastic-deploy)."""
