"""Techniques: one module per technique, each registering a config and an apply function."""
