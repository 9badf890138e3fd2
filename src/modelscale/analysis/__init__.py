"""Analyses that run techniques many times and measure the outcome (sensitivity, later search)."""
