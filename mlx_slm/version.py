"""The package version (read by pyproject.toml and written into converted directories)."""

__version__ = "0.1.0"
