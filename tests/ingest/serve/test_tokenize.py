"""vLLM's ``/tokenize``, ``/detokenize`` and ``/tokenizer_info`` (what lm-evaluation-harness's
remote tokenizer calls), against the GPT-2 tokenizer itself and the completions endpoint."""

from __future__ import annotations

import dataclasses
import json

from tests.ingest.serve.conftest import MODEL, post_json, raw_request, running

TEXT = "Hello world, “quoted” <|endoftext|> and\n\nmore"


def test_tokenize_matches_the_tokenizer_and_what_completions_scores(base_url, tiny_model):
    status, answer = post_json(base_url, "/tokenize", {"model": MODEL, "prompt": TEXT, "add_special_tokens": False})
    expected = tiny_model.tokenizer.encode(TEXT, add_special_tokens=False)
    assert status == 200 and answer == {"count": len(expected), "max_model_len": 256, "tokens": expected}
    assert 50256 in answer["tokens"]  # the special token's text is the special token, as in prompts
    _, echoed = post_json(base_url, "/v1/completions", {"model": MODEL, "prompt": TEXT, "echo": True, "max_tokens": 0, "logprobs": 0})
    assert echoed["usage"]["prompt_tokens"] == answer["count"]
    _, strs = post_json(base_url, "/tokenize", {"prompt": "Hello world", "return_token_strs": True})
    assert strs["token_strs"] == ["Hello", "Ġworld"]  # the tokenizer's pieces, as vLLM returns them


def test_tokenize_messages_as_chat_builds_its_prompt(base_url):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    _, by_messages = post_json(base_url, "/tokenize", {"model": MODEL, "messages": messages})
    _, by_text = post_json(base_url, "/tokenize", {"model": MODEL, "prompt": "Be brief.\nHi"})
    assert by_messages["tokens"] == by_text["tokens"]
    _, chat = post_json(base_url, "/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 1})
    assert chat["usage"]["prompt_tokens"] == by_messages["count"]


def test_detokenize_inverts_tokenize(base_url):
    _, tokens = post_json(base_url, "/tokenize", {"prompt": TEXT})
    status, answer = post_json(base_url, "/detokenize", {"model": MODEL, "tokens": tokens["tokens"]})
    assert status == 200 and answer == {"prompt": TEXT}
    assert post_json(base_url, "/detokenize", {"tokens": []})[1] == {"prompt": ""}


def test_tokenizer_info_has_what_lm_eval_reads(base_url):
    status, _, raw = raw_request(base_url, "GET", "/tokenizer_info")
    info = json.loads(raw)
    assert status == 200 and info["eos_token"] == "<|endoftext|>" and info["bos_token"] == "<|endoftext|>"
    assert info["model_max_length"] == 256 and info["tokenizer_class"]
    assert not any(k.endswith("_file") or k == "name_or_path" for k in info)  # no local paths
    status, _, raw = raw_request(base_url, "GET", "/tokenizer_info?model=nope")
    assert status == 404 and json.loads(raw)["error"]["param"] == "model"


def test_model_may_be_left_out_only_where_the_models_share_a_vocabulary(tiny_model):
    same = dataclasses.replace(tiny_model, name="same")
    other = dataclasses.replace(tiny_model, name="other", token_strings=["!!"] + tiny_model.token_strings[1:])
    with running([tiny_model, same]) as url:
        assert post_json(url, "/tokenize", {"prompt": "Hi"})[0] == 200
    with running([tiny_model, other]) as url:
        status, answer = post_json(url, "/tokenize", {"prompt": "Hi"})
        assert status == 400 and answer["error"]["param"] == "model"
        assert "different vocabularies" in answer["error"]["message"]
        assert post_json(url, "/tokenize", {"model": "other", "prompt": "Hi"})[0] == 200
        status, _, raw = raw_request(url, "GET", "/tokenizer_info")
        assert status == 400 and json.loads(raw)["error"]["param"] == "model"
