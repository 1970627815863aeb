"""Engines turn Plan segments into executables: ``host`` (numpy) today, ``native`` next."""

from nerve.engines.base import Engine, Executable, get_engine

__all__ = ["Engine", "Executable", "get_engine"]
