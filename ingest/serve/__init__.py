"""``approxft serve``: local Hugging Face causal LMs behind OpenAI's and vLLM's HTTP protocol, so
that collection and other clients (lm-evaluation-harness) run offline. ``model`` (loading),
``params`` (a request, checked where it enters), ``generation`` (forward passes under the model
lock), ``text`` (decoding, stop sequences), ``choices`` (samples and their logprob shapes),
``completions``/``chat`` (whole responses and streamed chunks), ``tokenization`` (vLLM's tokenizer
endpoints), ``completer`` (one entry per endpoint), ``encoding`` (JSON in pieces), ``http`` (the
stdlib server) and ``batch_api`` (``/v1/files`` and ``/v1/batches``)."""
