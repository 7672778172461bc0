"""EVC (Edge Vision Cluster): run a fleet of edge AI devices from one controller."""

__version__ = "0.1.0"
