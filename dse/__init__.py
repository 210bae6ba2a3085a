"""dse: design-space exploration of compact CNNs (Shallow SqueezeNext reproduction)."""

__version__ = "0.1.0"
