"""happy-observatory's node agent and cluster processor."""

__version__ = "2.0.0"
