"""pnoc: P-NOC weakly supervised semantic segmentation as a reproducible pipeline."""

__version__ = "0.1.0"
