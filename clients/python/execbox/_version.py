"""The one place execbox's version is written (pyproject, the SDK, the CLI and the service read it)."""

__version__ = "0.1.0"
