"""Strongroom: an open backup agent and recovery vault (encrypted, deduplicated, incremental)."""

__version__ = "0.1.0"
