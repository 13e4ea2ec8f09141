"""alignlab: post-training for language models. Importing this package does no work."""

__version__ = "0.1.0"
