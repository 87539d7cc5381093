"""What an operator sees of each request: its id in every log line, an access line, and its trace.

Below every other gateway package (it imports none of them): the serving layers fill in the request's
:class:`~gateway.telemetry.request_scope.RequestScope`, the outermost ones open and close it.
"""
