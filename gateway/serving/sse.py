"""Server-sent events framed exactly as OpenAI frames them."""

from pydantic import BaseModel

from gateway.errors import OpenAIError

DONE = b"data: [DONE]\n\n"


def sse_data(payload: BaseModel) -> bytes:
    """One ``data:`` event carrying a JSON object."""
    return b"data: " + payload.model_dump_json().encode() + b"\n\n"


def sse_error(error: OpenAIError) -> bytes:
    """A mid-stream error event (the official clients raise it as an APIError)."""
    import json

    return b"data: " + json.dumps(error.body()).encode() + b"\n\n"
