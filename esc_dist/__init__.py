"""esc-dist: distributed SFT, preference mining and DPO for decoupled emotional-support models."""

__version__ = "0.1.0"
