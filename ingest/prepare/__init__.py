"""Corpus preparation: documents into a fine-tuning share and held-out ``val``/``test`` chunks
(``corpus``), the request manifest, and the tokenizers that cut them (``bpe``: GPT-2's BPE,
offline; ``tokenizer``: tokenizers by name)."""
