"""The proxy fast path: generation requests relayed to an upstream pool without reshaping."""
