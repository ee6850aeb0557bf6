"""Parsing collected responses: pure functions from response bodies to per-position arrays.

In the order a file is read: ``model_file`` (one model's JSONL file against the manifest),
``batch_lines`` (Batch-API-shaped lines, ``custom_id`` to request, next-token assembly),
``formats`` (vLLM ``prompt_logprobs`` and chat ``logprobs`` into the legacy-completions shape),
``completions`` (the one validating parser: a legacy echo response into its tokens, target values
and top-k lists), ``matching`` (each response to the request whose prompt it spells).
"""
