"""Pydantic models of the OpenAI protocol as sinkwatch serves it, plus the ``stability`` extension."""
