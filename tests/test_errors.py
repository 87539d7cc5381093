"""Error bodies follow OpenAI's shape; what metrics label them with stays a bounded set."""

from gateway.errors import UpstreamRejected


def test_an_upstream_refusal_keeps_its_type_for_the_client_but_not_for_metrics():
    refused = UpstreamRejected(422, {"message": "nope", "type": "upstream_specific_kind", "param": "seed"})
    assert refused.body() == {
        "error": {"message": "nope", "type": "upstream_specific_kind", "param": "seed", "code": None}
    }
    assert refused.error_type == "invalid_request_error"
    assert refused.status_code == 422


def test_an_upstream_refusal_without_a_type_is_an_invalid_request():
    refused = UpstreamRejected(400, {"message": "bad"})
    assert refused.body()["error"]["type"] == "invalid_request_error"
