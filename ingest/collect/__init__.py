"""Collection: log-probabilities from OpenAI-compatible endpoints, concurrent and resumable.

Modules, in the order a run uses them: ``config`` (models.toml), ``run_manifest`` (the run's
request manifest, prepared once), ``jobs`` (the requests of each mode, pure, and the check that a
response answers its request), ``rawlog`` (the append-only raw file, fsynced per line),
``contexts`` (next-token contexts as token ids, or as text checked by re-tokenizing),
``endpoint`` (what a run learned about a role's endpoint, ``raw/<role>.endpoint.json``),
``probe`` (echo's max_tokens and token-id prompts, asked once), ``verify`` (``--verify``: echo
against next-token requests), ``runner`` (AsyncOpenAI, concurrency, rate limit, retries, early
stop), ``batch`` (OpenAI Batch API), ``deep`` (the calibration requests' deeper lists -> a deep
sample), ``server_tokens`` (the endpoint's own tokenization for corpus preparation),
``progress``, ``collect`` (all roles at once).
"""
