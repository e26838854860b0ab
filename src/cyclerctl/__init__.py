"""cyclerctl: hardware-in-the-loop battery cycler control."""

__version__ = "0.1.0"
