"""``--log-content``: bodies capped, credentials redacted even where the cap cuts through them."""

from gateway.telemetry.content import REDACTED, ContentLogging

KEY = "sk-abcdefghijklmnopqrstuvwxyz"


def test_credential_headers_are_redacted_and_the_rest_kept():
    capture = ContentLogging(100).capture(
        [(b"authorization", f"Bearer {KEY}".encode()), (b"x-api-key", b"other"), (b"x-request-id", b"r1")]
    )
    headers = capture.fields()["request_headers"]
    assert headers == {"authorization": REDACTED, "x-api-key": REDACTED, "x-request-id": "r1"}


def test_the_requests_key_is_redacted_in_bodies_even_across_the_cap():
    capture = ContentLogging(20).capture([(b"authorization", f"Bearer {KEY}".encode())])
    capture.request_body(b'{"note": "' + KEY.encode()[:5])
    capture.request_body(KEY.encode()[5:] + b'", "more": "' + b"x" * 100 + b'"}')
    capture.response_body(b"short")
    shown = capture.fields()
    assert KEY[:12] not in shown["request_body"]
    assert shown["request_body"].startswith('{"note": "[REDACTED]')
    assert shown["request_body"].endswith(f"[{10 + len(KEY) + 114} bytes in all]")
    assert shown["response_body"] == "short"
