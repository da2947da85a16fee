"""Photobot: an event photo booth run from one Trio process of supervised actors."""

__version__ = "0.1.0"
