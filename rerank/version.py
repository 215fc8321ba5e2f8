"""The package version, in a module of its own so any part can read it without importing the
whole package (``rerank/__init__`` imports nearly everything)."""
__version__ = "0.1.0"
