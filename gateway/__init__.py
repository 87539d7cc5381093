"""sinkwatch gateway: OpenAI-compatible serving with hidden-state stability monitoring."""

__version__ = "0.1.0"
