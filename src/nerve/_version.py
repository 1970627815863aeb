"""The single source of nerve's version (read by pyproject and the structural key)."""

__version__ = "0.1.0"
