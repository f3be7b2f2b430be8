"""The endpoint under hostile traffic (issue 11): the typed protocol and its 400s, the context
limit, failure isolation inside a batch, cancellation of abandoned requests, stop strings in both
modes, conversations with several or no images, logprobs, and the OpenAI-client surface. Real
HTTP on loopback against one Serve deployment of the tiny model shared by the module."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from PIL import Image

from hired_ops import DropConfig
from pipeline.data.synthetic import random_image
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM
from pipeline.serve.config import ServeConfig
from pipeline.model.engine import Engine, EngineLimits
from pipeline.serve.decoding import LLMItem, LLMJob, engine_request
from pipeline.serve.protocol import ChatCompletionRequest
from tests.test_serving import MODEL, chat_body, data_url, free_port, png_bytes

LONG_LIMIT = 3000  # completion tokens a request may ask for here: enough to keep a batch busy for seconds
POSITIONS = 4096  # the tiny model's max_position_embeddings


def parse(body: dict, **config):
    """``body`` as the tiny model's server reads it (requests name the model served)."""
    return ChatCompletionRequest.parse(body).to_chat(ServeConfig.from_dict({"model": {"name": MODEL}, **config}), 2880)


# -- fast: the typed protocol ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, code, param",
    [
        (lambda b: b.update(tools=[{"type": "function", "function": {"name": "f"}}]), "unsupported_value", "tools"),
        (lambda b: b.update(response_format={"type": "json_object"}), "unsupported_value", "response_format.type"),
        (lambda b: b.update(n=3), "unsupported_value", "n"),
        (lambda b: b.update(logprobs=True, stream=True), "unsupported_value", "logprobs"),
        (lambda b: b.update(top_logprobs=2), "invalid_value", "top_logprobs"),
        (lambda b: b.update(frequency_penalty=0.5), "unsupported_value", "frequency_penalty"),
        (lambda b: b.update(fancy=True), "unknown_field", "fancy"),
        (lambda b: b.update(seed=2**64), "invalid_value", "seed"),
        (lambda b: b.update(max_tokens=8.0), "invalid_type", "max_tokens"),
        (lambda b: b.update(max_tokens=True), "invalid_type", "max_tokens"),
        (lambda b: b.update(temperature=float("inf")), "invalid_value", "temperature"),
        (lambda b: b.update(hired={"budget": float("inf")}), "invalid_type", "hired.budget"),
        (lambda b: b.update(stop=["a", ""]), "invalid_value", "stop[1]"),
        (lambda b: b["messages"][0]["content"].append({"type": "input_audio"}), "invalid_type", "messages[0].content[2]"),
        (lambda b: b["messages"][0]["content"][0].update(text=5), "invalid_type", "messages[0].content[0].text"),
        (lambda b: b["messages"].append({"role": "tool", "content": "x", "tool_call_id": "1"}), "unsupported_value",
         "messages[1].role"),
    ],
)
def test_typed_request_refuses_with_the_field_named(change, code, param):
    from pipeline.serve.errors import ApiError

    body = chat_body("data:,")
    change(body)
    with pytest.raises(ApiError) as caught:
        parse(body)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, code, param), caught.value.message


def test_conversation_becomes_chat_template_messages():
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "First?"}, {"type": "image_url", "image_url": {"url": "data:a"}}]},
            {"role": "assistant", "content": "A square."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:b"}},
                                         {"type": "image_url", "image_url": {"url": "data:c"}}, {"type": "text", "text": "And?"}]},
        ],
        "temperature": 1e-300,
        "response_format": {"type": "text"},
    }
    parsed = parse(body)
    assert parsed.messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Be brief.\nFirst?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "And?"}]},
    ]
    assert [param for _, param in parsed.images] == [
        "messages[1].content[1].image_url.url", "messages[3].content[0].image_url.url", "messages[3].content[1].image_url.url"
    ]
    assert not parsed.options.sampling  # a vanishing temperature decodes greedily (it overflowed before)


def test_unexpected_exceptions_become_json_500():
    from starlette.requests import Request

    from pipeline.serve.ingress import _on_anything_else

    request = Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""})
    response = asyncio.run(_on_anything_else(request, RuntimeError("boom")))
    assert response.status_code == 500
    assert json.loads(response.body)["error"]["code"] == "internal_error"


# -- slow: the model path in process ---------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm(tiny_next) -> HiredVLM:
    model, processor = tiny_next
    return HiredVLM(model, processor, DropConfig(budget=0.2))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [random_image(h, w, seed=i) for i, (h, w) in enumerate([(480, 640), (336, 336), (700, 300)])]


def user(text: str, n_images: int = 0) -> list[dict]:
    return [{"role": "user", "content": [*[{"type": "image"}] * n_images, {"type": "text", "text": text}]}]


def _decode(vlm: HiredVLM, items: list[LLMItem], on_delta=lambda i, text: None) -> list:
    """Each item's answer (or exception) from one engine holding them all at once."""
    answers: list = [None] * len(items)
    engine = Engine(vlm, EngineLimits(max_num_seqs=len(items)))
    for i, item in enumerate(items):
        engine.submit(engine_request(vlm, item, lambda text, i=i: on_delta(i, text), lambda a, i=i: answers.__setitem__(i, a)))
    engine.run()
    return answers


@pytest.mark.slow
def test_a_failing_request_fails_alone_in_its_batch(vlm, images):
    encoded = vlm.encode(images)
    options = GenerateOptions(max_new_tokens=6)
    good = [LLMItem(LLMJob(tuple(vlm.chat_ids(user(f"Q{i}", 1))), options), [encoded[i]]) for i in range(3)]
    # two image slots for one image: building this row's input fails inside the batch
    bad = LLMItem(LLMJob(tuple(vlm.chat_ids(user("bad", 2))), options), [encoded[0]])
    together = _decode(vlm, [good[0], bad, good[1], good[2]])
    assert isinstance(together[1], ValueError)
    alone = [_decode(vlm, [item])[0] for item in good]
    mates = [together[0], *together[2:]]
    assert [(a["text"], a["generated_tokens"]) for a in mates] == [(a["text"], a["generated_tokens"]) for a in alone]


@pytest.mark.slow
def test_cancelled_rows_end_at_the_next_step_and_queued_ones_never_start(vlm, images):
    encoded = vlm.encode(images[:2])
    options = GenerateOptions(max_new_tokens=40)
    items = [LLMItem(LLMJob(tuple(vlm.chat_ids(user("Q", 1))), options), [e]) for e in encoded]
    queued = LLMItem(LLMJob(tuple(vlm.chat_ids(user("Q", 1))), options), [encoded[0]])
    queued.cancel.set()
    steps: list[int] = []

    def on_delta(i: int, text: str) -> None:
        steps.append(i)
        if i == 0 and steps.count(0) == 3:
            items[0].cancel.set()  # the client of row 0 goes away after its third piece of text

    answers = _decode(vlm, [*items, queued], on_delta)
    assert type(answers[2]).__name__ == "Cancelled"
    # row 0 ended at the step its client left, row 1 ran to its limit
    assert answers[0]["generated_tokens"] < 10
    assert answers[1]["generated_tokens"] == 40


# -- slow: one Serve deployment on loopback --------------------------------------------------------


@pytest.fixture(scope="module")
def server(ray_local) -> str:
    from ray import serve

    from pipeline.serve.app import start

    config = ServeConfig.from_dict({
        "model": {"name": MODEL, "dtype": "float32"},  # answers are compared with the fp32 model run in process
        "max_tokens_limit": LONG_LIMIT,
        "max_images_per_request": 2,
        "max_batch_size": 8,
        "batch_wait_timeout_s": 0.2,  # long enough that concurrent requests share a batch here
        "allowed_methods": ("hired", "full"),
    })
    url = start(config, host="127.0.0.1", port=free_port())
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=120)


def post(server: str, body: dict | bytes, timeout: float = 120):
    import requests

    if isinstance(body, bytes):
        return requests.post(f"{server}/v1/chat/completions", data=body, timeout=timeout)
    return requests.post(f"{server}/v1/chat/completions", json=body, timeout=timeout)


def direct(vlm: HiredVLM, messages: list[dict], images: list[Image.Image], max_new_tokens: int = 8) -> str:
    encoded = vlm.encode(images) if images else []
    return vlm.generate_chats([(vlm.chat_ids(messages), encoded)], GenerateOptions(max_new_tokens=max_new_tokens))[0].text


@pytest.mark.slow
def test_long_prompt_is_refused_alone_and_inside_a_batch_of_good_ones(server, vlm, images):
    long_text = "lorem ipsum dolor " * 3000  # ~9k tokens, past the 4096 positions
    start = time.perf_counter()
    alone = post(server, {"model": MODEL, "messages": [{"role": "user", "content": long_text}], "max_tokens": 8})
    assert alone.status_code == 400 and time.perf_counter() - start < 10
    error = alone.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("context_length_exceeded", "messages", "invalid_request_error")
    assert str(POSITIONS) in error["message"]
    # a short prompt whose image (all 2340 positions of a 480x640 image kept) and max_tokens do
    # not fit: ~20 + 2340 + 3000 > 4096
    edge = post(server, chat_body(data_url(png_bytes(images[0]))) | {"max_tokens": LONG_LIMIT, "hired": {"method": "full"}})
    assert edge.status_code == 400 and edge.json()["error"]["code"] == "context_length_exceeded"
    assert "up to 2340 for the images" in edge.json()["error"]["message"]

    good = [chat_body(data_url(png_bytes(images[i % 3]))) for i in range(7)]
    bodies = good[:3] + [{"model": MODEL, "messages": [{"role": "user", "content": long_text}], "max_tokens": 8}] + good[3:]
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: post(server, b), bodies))
    assert [r.status_code for r in replies] == [200] * 3 + [400] + [200] * 4
    expected = [direct(vlm, user("What is in this image?", 1), [images[i % 3]]) for i in range(3)]
    answers = [r.json()["choices"][0]["message"]["content"] for r in replies[:3] + replies[4:]]
    assert answers == [expected[i % 3] for i in range(7)]


def _llm_stats(server: str) -> dict:
    import requests

    return requests.get(f"{server}/v1/stats", timeout=30).json()["llm"]


def _abandon_stream(server: str, body: dict) -> None:
    """Send a streamed request, read its first event, and hang up."""
    parts = urlsplit(server)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    reply = connection.getresponse()
    assert reply.status == 200
    assert reply.readline().startswith(b"data: ")
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()


@pytest.fixture(scope="module")
def long_run(server) -> tuple[dict, float]:
    """A request that decodes for long (1,600+ tokens on the tiny model) and its time alone."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": LONG_LIMIT}
    post(server, body | {"max_tokens": 4})  # warm
    start = time.perf_counter()
    reply = post(server, body)
    assert reply.json()["usage"]["completion_tokens"] > 1000
    return body, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stream", "plain"])
def test_a_client_that_hangs_up_frees_the_replica(server, long_run, mode):
    import requests

    body, alone_s = long_run
    good = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4}
    before = _llm_stats(server)["cancelled"]
    if mode == "stream":
        _abandon_stream(server, body | {"stream": True})  # after its first token
    else:
        with pytest.raises(requests.Timeout):
            post(server, body, timeout=alone_s / 5)  # mid-decoding
    start = time.perf_counter()
    reply = post(server, good)
    waited = time.perf_counter() - start
    assert reply.status_code == 200
    # behind the abandoned request, had it kept decoding, this would wait most of alone_s
    assert waited < alone_s / 2, (waited, alone_s)
    deadline = time.monotonic() + 30
    while _llm_stats(server)["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _llm_stats(server)["cancelled"] == before + 1


def _timed(server: str, body: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    reply = post(server, body)
    assert reply.status_code == 200, reply.text
    return time.perf_counter() - start, reply.json()


@pytest.mark.slow
def test_short_requests_do_not_wait_for_a_long_one_decoding(server):
    """Continuous batching (issue 25): a request sent while a 500-token one decodes joins the
    running batch at the next step and leaves when it ends, instead of waiting for the batch."""
    short = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4}
    long = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 500}
    _timed(server, short)  # warm
    alone = sorted(_timed(server, short)[0] for _ in range(3))[1]
    long_alone, reply = _timed(server, long)
    assert reply["usage"]["completion_tokens"] == 500
    with ThreadPoolExecutor(4) as pool:
        started = time.perf_counter()
        running = pool.submit(_timed, server, long)
        time.sleep(0.3)
        sequential = [_timed(server, short)[0] for _ in range(2)]  # one after the other
        together = list(pool.map(lambda _: _timed(server, short)[0], range(3)))  # three at once
        shorts_done = time.perf_counter() - started
        long_s, reply = running.result()
    assert reply["usage"]["completion_tokens"] == 500
    assert shorts_done < long_s, (shorts_done, long_s)  # they did not wait for the long one to end
    limit = 2 * alone + 0.3
    print(f"short alone {alone:.3f} s, long alone {long_alone:.3f} s; with the long one decoding: sequential "
          f"{[round(t, 3) for t in sequential]}, three at once {[round(t, 3) for t in together]}, long {long_s:.3f} s")
    assert max(sequential + together) <= limit, (sequential, together, alone, long_alone)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, body, status, code, param",
    [
        ("deeply nested", b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "invalid_json", None),
        ("NaN literal", b'{"model": "m", "messages": [], "temperature": NaN}', 400, "invalid_json", None),
        ("number overflowing to inf", b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
         b'"hired": {"budget": 1e999}}' % MODEL.encode(), 400, "invalid_type", "hired.budget"),
        ("seed past 64 bits", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                          "seed": 2**64}).encode(), 400, "invalid_value", "seed"),
        ("not an object", b"[1, 2]", 400, "invalid_type", None),
    ],
)
def test_former_500s_are_4xx_json(server, name, body, status, code, param):
    reply = post(server, body)
    assert reply.status_code == status and reply.headers["content-type"] == "application/json", (name, reply.text)
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == (code, param), (name, error)


@pytest.mark.slow
def test_vanishing_temperature_decodes_greedily(server, client, images):
    messages = chat_body(data_url(png_bytes(images[1])))["messages"]
    greedy = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    tiny = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=1e-300, seed=-(2**63))
    assert tiny.choices[0].message.content == greedy.choices[0].message.content


@pytest.mark.slow
def test_conversations_text_only_and_two_images_equal_the_model(client, server, vlm, images):
    import openai

    two = [{"role": "user", "content": [
        {"type": "text", "text": "Compare them."},
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(images[0]))}},
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(images[2]))}},
    ]}]
    reply = client.chat.completions.create(model=MODEL, messages=two, max_tokens=8)
    assert reply.choices[0].message.content == direct(vlm, user("Compare them.", 2), [images[0], images[2]])
    assert reply.usage.visual_tokens == 2 * 576  # each image gets the 20% budget

    text_only = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    reply = client.chat.completions.create(model=MODEL, messages=text_only, max_tokens=8)
    assert reply.choices[0].message.content == direct(vlm, user("Be brief.\nSay hello."), [])
    assert reply.usage.visual_tokens == 0

    turns = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png_bytes(images[1]))}},
                                     {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A pattern."},
        {"role": "user", "content": "Which colours?"},
    ]
    expected_turns = [*user("What is it?", 1), {"role": "assistant", "content": [{"type": "text", "text": "A pattern."}]},
                      *user("Which colours?")]
    reply = client.chat.completions.create(model=MODEL, messages=turns, max_tokens=8)
    assert reply.choices[0].message.content == direct(vlm, expected_turns, [images[1]])

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=two + two, max_tokens=8)  # 4 images, 2 allowed
    assert caught.value.body["code"] == "too_many_images"


@pytest.mark.slow
def test_answers_and_chunks_parse_as_openai_types_with_logprobs(server, images):
    import requests
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    body = chat_body(data_url(png_bytes(images[0])), max_tokens=6)
    reply = ChatCompletion.model_validate(post(server, body | {"logprobs": True, "top_logprobs": 3}).json())
    tokens = reply.choices[0].logprobs.content
    assert len(tokens) == reply.usage.completion_tokens == 6
    assert "".join(t.token for t in tokens).strip() == reply.choices[0].message.content
    for token in tokens:  # greedy: the chosen token is the most likely one
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        assert token.top_logprobs[0].token == token.token and token.top_logprobs[0].logprob == pytest.approx(token.logprob)
    with requests.post(f"{server}/v1/chat/completions", json=body | {"stream": True, "stream_options": {"include_usage": True}},
                       stream=True, timeout=60) as streamed:
        lines = [line[len(b"data: "):] for line in streamed.iter_lines() if line.startswith(b"data: ")]
    assert lines[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(line) for line in lines[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


@pytest.mark.slow
def test_models_retrieve_health_head_and_openapi(client, server):
    import openai
    import requests

    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.model_extra["max_model_len"] == POSITIONS
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert requests.head(f"{server}/health", timeout=30).status_code == 200
    spec = requests.get(f"{server}/openapi.json", timeout=30).json()
    assert {"/v1/chat/completions", "/v1/models/{model_id}", "/health"} <= set(spec["paths"])
    assert "swagger" in requests.get(f"{server}/docs", timeout=30).text.lower()


@pytest.mark.slow
def test_prometheus_metrics_count_requests_tokens_and_batches(server, client, ray_local, images):
    import requests

    client.chat.completions.create(model=MODEL, messages=chat_body(data_url(png_bytes(images[1])))["messages"], max_tokens=4)
    port = ray_local._private.worker.global_worker.node.metrics_export_port
    wanted = ("hired_chat_requests_total", "hired_tokens_total", "hired_visual_tokens_kept_total", "hired_batch_size_bucket")
    text = ""
    deadline = time.monotonic() + 60  # Ray's agent exports every few seconds
    while time.monotonic() < deadline:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        except requests.ConnectionError:
            pytest.skip("this Ray node runs no metrics agent")
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    missing = [name for name in wanted if name not in text]
    assert not missing, missing
    served = [line for line in text.splitlines() if line.startswith("ray_hired_chat_requests_total") or
              line.startswith("hired_chat_requests_total")]
    assert any('status="200"' in line for line in served), served
