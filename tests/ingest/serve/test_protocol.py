"""``stop``, ``n`` and ``stream`` for completions and chat, through the real openai client (and the
raw event stream), against ``approxft serve`` built in-process over a tiny random GPT-2."""

from __future__ import annotations

import json

import openai
import pytest

from tests.ingest.serve.conftest import MODEL, raw_request


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(api_key="unused", base_url=base_url, max_retries=0)


def greedy(client, prompt, **kwargs):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, **kwargs)


def test_stop_cuts_before_the_first_stop_sequence_and_says_so(client):
    full = greedy(client, "Once upon a time").choices[0]
    assert full.finish_reason == "length" and len(full.text) > 6
    stop = full.text[4:6]
    cut = greedy(client, "Once upon a time", stop=stop, logprobs=2).choices[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"
    # The tokens shown are those the text begins in; the one holding the stop may straddle the cut.
    shown = "".join(cut.logprobs.tokens)
    assert shown.startswith(cut.text) and len(shown) < len(full.text)
    # A list: the earliest match wins, wherever it is in the list.
    stops = [full.text[8:10], stop]
    first = min(full.text.index(s) for s in stops)
    assert greedy(client, "Once upon a time", stop=stops).choices[0].text == full.text[:first]
    # A stop sequence that never occurs changes nothing.
    assert greedy(client, "Once upon a time", stop="\x00never").choices[0].text == full.text


def test_stop_in_chat(client):
    def chat(**kwargs):
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello there"}],
                                              max_tokens=10, temperature=0, **kwargs).choices[0]

    full = chat()
    stop = full.message.content[3:5]
    cut = chat(stop=[stop])
    assert cut.message.content == full.message.content[: full.message.content.index(stop)]
    assert (full.finish_reason, cut.finish_reason) == ("length", "stop")


def test_n_gives_n_samples_reproducible_with_a_seed(client):
    def sample(seed, n=3, prompt="The weather"):
        done = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, n=n, seed=seed)
        assert [c.index for c in done.choices] == list(range(len(done.choices)))
        return done

    first = sample(11)
    texts = [c.text for c in first.choices]
    assert len(texts) == 3 and len(set(texts)) == 3  # each its own sample
    assert [c.text for c in sample(11).choices] == texts
    assert [c.text for c in sample(12).choices] != texts
    assert first.usage.completion_tokens == 18
    # Several prompts: choice p * n + j; the prompts do not repeat each other's draws.
    two = client.completions.create(model=MODEL, prompt=["The weather", "The weather"], max_tokens=6, n=2, seed=11)
    assert len(two.choices) == 4 and len({c.text for c in two.choices}) == 4
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, n=2, seed=5)
    assert len(chat.choices) == 2 and chat.choices[0].message.content != chat.choices[1].message.content


@pytest.mark.parametrize("stop", [None, "e", [" t", "\n"]])
def test_a_completions_stream_yields_the_same_text_as_the_whole_response(client, stop):
    kwargs = {"model": MODEL, "prompt": ["A long road", "Rain"], "max_tokens": 10, "n": 2, "seed": 3, "stop": stop, "logprobs": 1}
    whole = client.completions.create(**kwargs)
    texts, tokens, finish, usage = {}, {}, {}, None
    for chunk in client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            tokens.setdefault(c.index, []).extend(c.logprobs.tokens if c.logprobs else [])
            if c.finish_reason:
                assert c.index not in finish
                finish[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert texts == {c.index: c.text for c in whole.choices}
    assert tokens == {c.index: c.logprobs.tokens for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert usage.completion_tokens == whole.usage.completion_tokens and usage.prompt_tokens == whole.usage.prompt_tokens


def test_a_chat_stream_yields_role_then_content_then_finish(client):
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me"}], "max_tokens": 8, "n": 2, "seed": 9}
    whole = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=2)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, logprobs=True, top_logprobs=2))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == choice.message.content
        assert [t.token for c in mine if c.logprobs for t in c.logprobs.content] == [t.token for t in choice.logprobs.content]
        assert [c.finish_reason for c in mine if c.finish_reason] == [choice.finish_reason]


def test_the_event_stream_on_the_wire(base_url):
    body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 3, "stream": True}).encode()
    status, headers, raw = raw_request(base_url, "POST", "/v1/completions", body, {"Content-Length": str(len(body))})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = raw.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_echo_with_stop_keeps_the_prompt_and_cuts_the_generated_text(client):
    full = greedy(client, "Stop here", echo=True, logprobs=0).choices[0]
    generated = full.text.removeprefix("Stop here")
    cut = greedy(client, "Stop here", echo=True, logprobs=0, stop=generated[2:4]).choices[0]
    assert cut.text == "Stop here" + generated[: generated.index(generated[2:4])]
    assert cut.logprobs.token_logprobs[0] is None and cut.logprobs.tokens[:2] == ["Stop", " here"]


def test_a_stop_sequence_in_the_prompt_is_not_a_stop(client):
    done = greedy(client, "stop stop stop", echo=True, stop="stop").choices[0]
    assert done.text.startswith("stop stop stop")


def test_an_http_1_0_stream_ends_with_the_connection(base_url):
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 2, "stream": True}).encode()
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        answer = sock.makefile("rb").read()  # returns once the server closes
    head, _, events = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and events.startswith(b"data: {") and events.endswith(b"data: [DONE]\n\n")


def test_a_client_that_leaves_a_stream_does_not_stop_the_server(client, base_url):
    stream = client.completions.create(model=MODEL, prompt="Go on", max_tokens=200, stream=True)
    next(iter(stream))
    stream.close()
    assert client.completions.create(model=MODEL, prompt="Still here", max_tokens=1).choices[0].finish_reason == "length"


def test_a_one_token_prompt_echoed_has_nothing_to_score_but_its_generated_token(client):
    done = client.completions.create(model=MODEL, prompt="Hi", echo=True, logprobs=2, max_tokens=1, temperature=0).choices[0]
    assert done.logprobs.token_logprobs[0] is None and done.logprobs.top_logprobs[0] is None
    assert len(done.logprobs.tokens) == 2 and done.logprobs.tokens[1] in done.logprobs.top_logprobs[1]
