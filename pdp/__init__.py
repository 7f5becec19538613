"""pdp: a centralized policy decision point."""

__version__ = "0.1.0"
