"""Server-sent events framed exactly as OpenAI frames them (errors: :func:`gateway.errors.error_event`)."""

from pydantic import BaseModel

__all__ = ["DONE", "sse_data"]

DONE = b"data: [DONE]\n\n"


def sse_data(payload: BaseModel) -> bytes:
    """One ``data:`` event carrying a JSON object."""
    return b"data: " + payload.model_dump_json().encode() + b"\n\n"
