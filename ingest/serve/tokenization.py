"""vLLM's tokenizer endpoints, so that clients need no tokenizer of their own (lm-evaluation-
harness's ``tokenizer_backend="remote"`` uses all three, at the server's root):

- ``POST /tokenize``: ``{"model"?, "prompt", "add_special_tokens": true}`` or ``{"model"?,
  "messages", "add_special_tokens": false}`` (the messages' contents one per line, as chat
  prompts are built) -> ``{"count", "max_model_len", "tokens"}`` (and ``token_strs``, the
  tokenizer's pieces, with ``return_token_strs``);
- ``POST /detokenize``: ``{"model"?, "tokens"}`` -> ``{"prompt"}``;
- ``GET /tokenizer_info[?model=NAME]``: the tokenizer's settings (``eos_token``, ``bos_token``,
  ``model_max_length``, ``tokenizer_class``, ``chat_template`` where it has one).

``model`` may be left out when every served model has the same vocabulary. A completions text
prompt is tokenized as ``/tokenize`` does with ``add_special_tokens`` false.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest.serve.errors import bad_request
from ingest.serve.model import LocalModel
from ingest.serve.params import check_ids, find_model, flag, message_text
from ingest.values import is_integer


class Tokenizers:
    """The tokenizer endpoints over ``models`` (name -> model). Whether a request may leave
    ``model`` out (every model has the same vocabulary: 50k strings each) is decided once, here."""

    def __init__(self, models: Mapping[str, LocalModel]) -> None:
        self.models = models
        first = next(iter(models.values()), None)
        self._shared = first if all(m.token_strings == first.token_strings for m in models.values()) else None

    def tokenize(self, body: Any) -> dict[str, Any]:
        model = self._model(body)
        if ("prompt" in body) == ("messages" in body):
            raise bad_request("give either prompt (a string) or messages", "prompt")
        if "prompt" in body:
            if not isinstance(body["prompt"], str):
                raise bad_request("prompt must be a string", "prompt")
            text, special = body["prompt"], flag(body, "add_special_tokens", True)
        else:
            text, special = message_text(body["messages"]), flag(body, "add_special_tokens", False)
        tokens = model.tokenizer.encode(text, add_special_tokens=special)
        out: dict[str, Any] = {"count": len(tokens), "max_model_len": model.max_context, "tokens": tokens}
        if flag(body, "return_token_strs", False):
            out["token_strs"] = model.tokenizer.convert_ids_to_tokens(tokens)
        return out

    def detokenize(self, body: Any) -> dict[str, Any]:
        """The text of ``tokens``, as completions spell it (``LocalModel.text``)."""
        model = self._model(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(map(is_integer, tokens)):
            raise bad_request("tokens must be a list of integer token ids", "tokens")
        return {"prompt": model.text(check_ids(model, tokens, "tokens", "tokens"))}

    def tokenizer_info(self, query: Mapping[str, str]) -> dict[str, Any]:
        """Like vLLM: the tokenizer's init settings (less file paths), its class and chat template."""
        model = self._model(dict(query))
        tokenizer = model.tokenizer
        info = {k: _plain(v) for k, v in (getattr(tokenizer, "init_kwargs", None) or {}).items()
                if not k.endswith("_file") and k != "name_or_path"}
        for name in ("eos_token", "bos_token", "pad_token"):  # lm-eval reads these; always present
            info[name] = _plain(getattr(tokenizer, name, None))
        info["model_max_length"] = model.max_context
        info["tokenizer_class"] = type(tokenizer).__name__
        if getattr(tokenizer, "chat_template", None):
            info["chat_template"] = tokenizer.chat_template
        return info

    def _model(self, body: Any) -> LocalModel:
        """The named model; with no name, the one vocabulary every served model shares."""
        if isinstance(body, Mapping) and body.get("model") is None:
            if self._shared is None:
                raise bad_request(f"model is required: the served models ({', '.join(self.models)}) have different "
                                  "vocabularies", "model")
            return self._shared
        return find_model(self.models, body)


def _plain(value: Any) -> Any:
    """A JSON value for a tokenizer setting (an AddedToken becomes its text)."""
    if hasattr(value, "content"):
        return value.content
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)
