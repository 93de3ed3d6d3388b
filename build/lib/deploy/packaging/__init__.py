"""Packaging: the output folder of a deploy, its manifest and its report."""
