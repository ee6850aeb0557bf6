"""Tiny GPT-2-architecture models with random weights and the real GPT-2 vocabulary, built
offline (the tokenizer files come from data/gpt2; there is no hub access)."""

from __future__ import annotations

from pathlib import Path

from ingest.bpe import GPT2_DIR

EOS = "<|endoftext|>"


def make_tiny_gpt2(directory: Path, *, seed: int, n_layer: int = 2, n_embd: int = 32, n_positions: int = 256) -> Path:
    """Save a random-weight GPT-2 (``n_layer`` layers, width ``n_embd``) and a GPT-2 tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50257, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=2)
    model = GPT2LMHeadModel(config)
    # Random init gives near-uniform predictions; larger output weights make top-k lists matter.
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8.0)
    model.save_pretrained(directory)
    bpe = Tokenizer(models.BPE.from_file(str(GPT2_DIR / "encoder.json"), str(GPT2_DIR / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS).save_pretrained(directory)
    return directory
