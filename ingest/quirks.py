"""What ingest tolerates in the responses it reads, counted per model: each quirk by name, what it
means, and the summary ``approxft ingest`` prints (the counts are kept in ``store.json``)."""

from __future__ import annotations

from collections.abc import Mapping

#: Quirk name -> what was tolerated and how, for a count of it.
QUIRKS: dict[str, str] = {
    "order_only": "responses taken for their requests by line order (or custom_id) alone: the manifest has no "
    "prompt text or tokens to check them against",
    "unspellable": "responses taken for their requests by line order (or custom_id) alone: their tokens spell "
    "nothing to check (chat responses are generated text; some tokens are named by id)",
    "by_content": "lines out of manifest order, matched to their requests by content (their tokens spell the "
    "request's prompt)",
    "start_token": "responses whose first token is not part of the prompt (a start-of-text token), left unscored",
    "generated": "tokens generated after the prompt (max_tokens >= 1), dropped",
    "unobserved": "values given as not observed (null, NaN, or a placeholder at or below -9999), stored as unknown",
    "resorted": "top_logprobs lists not by log-probability descending, or with unobserved entries, re-sorted",
    "unnamed": "list entries named by an empty string (llama-cpp-python's bytes of a partial character), dropped: "
    "never merged into one token",
    "appended": "lists holding the actual token appended below the top k, dropped from the list (its value is the "
    "target's)",
    "cut": "lists longer than k (besides an appended actual token), cut to their k highest entries",
    "failed_lines": "failed lines (an error, or a status other than 200) skipped",
    "repeated_lines": "successful lines for a request answered before, the last one kept",
    "unasked_lines": "successful lines for requests the manifest does not have, ignored",
}


def summary(quirks: Mapping[str, Mapping[str, int]]) -> list[str]:
    """One line per model and tolerated quirk, e.g. ``big: 3 lines out of manifest order, ...``;
    ``<model>: nothing tolerated`` for a model with none."""
    lines = []
    for model, counts in quirks.items():
        seen = [f"{model}: {counts[name]:,} {text}" for name, text in QUIRKS.items() if counts.get(name)]
        lines.extend(seen or [f"{model}: nothing tolerated"])
    return lines
