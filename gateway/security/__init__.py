"""Guards in front of the API: request size, strict JSON, API keys and rate limits."""
