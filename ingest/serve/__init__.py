"""``approxft serve``: local Hugging Face causal LMs behind an OpenAI-compatible API, so that
collection runs offline. ``model`` (loading, and what a completions request answers),
``http`` (the stdlib HTTP server), ``batch_api`` (``/v1/files`` and ``/v1/batches``)."""
