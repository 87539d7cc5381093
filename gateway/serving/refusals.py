"""What the generation path cannot honour, refused up front with a 400 naming the parameter.

The protocol models accept every field OpenAI defines; this path generates plain text from the prompt with
its own sampling, so a request that needs more (tool calls, structured output, audio, a reasoning model) is
refused with ``code: unsupported_parameter`` rather than answered as if the field had been read. A field
that asks for nothing this path lacks (``tool_choice: "none"``, a text ``response_format``) is served.
"""

from gateway.errors import UnsupportedParameter
from gateway.protocol.chat import ChatCompletionRequest

__all__ = ["refuse_unhonoured"]

_NEVER_HONOURED = {
    "audio": "audio output",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning effort (the served model is not a reasoning model)",
    "verbosity": "verbosity",
    "moderation": "moderation",
}


def _refuse(feature: str, param: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"{feature} is not supported by this server", param=param)


def refuse_unhonoured(body: ChatCompletionRequest) -> None:
    """Raise the 400 for the first chat field this path cannot honour."""
    if body.tool_choice not in (None, "none"):
        raise _refuse("tool calling", "tool_choice")
    if body.tools and body.tool_choice != "none":
        raise _refuse("tool calling", "tools")
    if body.function_call not in (None, "none"):
        raise _refuse("function calling", "function_call")
    if body.functions and body.function_call != "none":
        raise _refuse("function calling", "functions")
    for name, feature in _NEVER_HONOURED.items():
        if getattr(body, name) is not None:
            raise _refuse(feature, name)
    if body.response_format is not None and body.response_format.get("type") != "text":
        raise UnsupportedParameter("only response_format type 'text' is supported", param="response_format")
    if body.modalities is not None and body.modalities != ["text"]:
        raise UnsupportedParameter("only the 'text' modality is supported", param="modalities")
