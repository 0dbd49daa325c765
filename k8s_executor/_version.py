"""The package version, kept apart so the worker can read it without importing the API."""

__version__ = "0.1.0"
