"""aivarda: cycling variational data assimilation with AI forecast models."""
__version__ = "0.1.0"
