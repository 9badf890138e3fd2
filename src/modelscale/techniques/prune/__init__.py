"""Pruning techniques."""
