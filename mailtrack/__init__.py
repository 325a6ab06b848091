"""mailtrack: an email gateway for issues kept on a git branch."""

__version__ = "0.1.0"
