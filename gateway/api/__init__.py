"""HTTP routes (thin) and the mapping of every failure to an OpenAI error body."""
