"""The embedded engine: an in-process transformers model decoding concurrent requests in one batch."""
