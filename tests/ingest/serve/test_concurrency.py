"""A full-vocabulary request (logprobs = V, what ``collect --calibration-k all`` asks, here over
many positions at once) does not hold up other clients: the model lock covers forward passes
only, and the response is built and encoded outside it, in pieces. The real ``approxft serve`` runs
in its own process, so that the client's work here does not share its interpreter lock. How long
the small requests take is ``python -m bench.serve_concurrency``'s to measure; this checks that
they are answered while the big one runs."""

from __future__ import annotations

from bench.serve_concurrency import small_and_full_latencies
from tests.helpers import REPO
from tests.ingest.serve.conftest import MODEL
from tests.tiny_models import served

FULL = 50257


def test_small_requests_are_answered_while_a_full_vocabulary_request_is_in_flight(tiny_dir):
    with served({MODEL: tiny_dir}, cwd=REPO) as url:
        figures = small_and_full_latencies(url, MODEL, positions=24, vocab_size=FULL)
    assert figures["entries"] == 23 * FULL
    # With one lock over the whole request (as before), at most the one or two small requests
    # that slipped in before it or between its stages were answered while it ran.
    assert len(figures["small_during"]) >= 3, figures
