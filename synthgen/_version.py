"""The synthgen version, on the lowest floor so every layer may read it."""

__version__ = "0.1.0"
