"""The Ray Serve chat completions endpoint: config and request validation (fast), and real HTTP
on loopback against one Serve deployment of the tiny model (slow), checked against the direct API."""

from __future__ import annotations

import argparse
import base64
import http.server
import io
import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hired_ops import DropConfig
from pipeline.data.synthetic import random_image
from pipeline.model.generation import GenerateOptions
from pipeline.model.text_stream import TextStream, truncate_at_stop
from pipeline.model.vlm import HiredVLM
from pipeline.serve.app import build_app
from pipeline.serve.config import ServeConfig
from pipeline.serve.errors import ApiError
from pipeline.serve.images import check_remote_url, decode_data_url
from pipeline.serve.protocol import ChatCompletionRequest
from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
YAML_PATH = REPO / "cluster" / "serve" / "serve_config.yaml"
MODEL = TINY_MODEL
MAX_VISUAL = 2880  # LLaVA-NeXT: 5 partitions x 576
KEY = "test-key"
PROMPT = "What is in this image?"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def chat_body(url: str, prompt: str = PROMPT, **extra) -> dict:
    content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


def yaml_args() -> dict:
    return yaml.safe_load(YAML_PATH.read_text())["applications"][0]["args"]


# -- fast: configuration and request validation --------------------------------------------------


@pytest.mark.parametrize(
    "args, match",
    [
        ({"drop": {"method": "magic"}}, "unknown method"),
        ({"drop": {"method": "full"}, "allowed_methods": ("hired",)}, "must be in allowed_methods"),
        ({"drop": {"budget": "lots"}}, "not a number"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 32, "max_ongoing_requests": 8}, "fill a batch"),
        ({"allowed_image_hosts": ("http://evil/",)}, "host names"),
        ({"api_key": " "}, "api_key"),
        ({"vision": {"num_replicas": 0}}, "num_replicas"),
        ({"llm": {"gpus": 1}}, "num_gpus"),
        ({"default_max_tokens": 100, "max_tokens_limit": 10}, "max_tokens_limit"),
        ({"model": {"dtype": "float8"}}, "dtype"),
    ],
)
def test_config_rejects_bad_settings(args, match):
    with pytest.raises(ValueError, match=match):
        ServeConfig.from_dict(args)


def test_config_budget_range_in_tokens():
    config = ServeConfig(drop=DropConfig(budget="20%"), min_budget=64, max_budget=0.5)
    assert config.budget_range(MAX_VISUAL) == (64, 1440)
    with pytest.raises(ValueError, match="outside"):
        ServeConfig(drop=DropConfig(budget=1000), max_budget=0.25).budget_range(MAX_VISUAL)
    with pytest.raises(ValueError, match="above max_budget"):
        ServeConfig(min_budget=0.5, max_budget=100).budget_range(MAX_VISUAL)
    with pytest.raises(ValueError, match="unknown ServeConfig field"):
        ServeConfig.from_dict({"modle": MODEL})
    lists = ServeConfig(allowed_methods="hired, full", allowed_image_hosts="Images.Example.com:8080")
    assert lists.allowed_methods == ("hired", "full") and lists.allowed_image_hosts == ("images.example.com:8080",)


def test_yaml_config_parses_and_builds_the_app(monkeypatch):
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(YAML_PATH.read_text()))
    app = schema.applications[0]
    module, _, attr = app.import_path.partition(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    assert builder is build_app
    monkeypatch.setenv("HIRED_API_KEY", "from-env")
    built = builder(app.args)
    assert isinstance(built, Application)
    config = ServeConfig.from_dict(yaml_args())
    assert config.allowed_methods == ("hired", "hired-cdpp", "spatial", "random", "full") and config.budget_range(MAX_VISUAL) == (64, 2880)


def test_cli_flags_make_the_config(monkeypatch):
    from jobs import serve as serve_cli

    monkeypatch.setenv("HIRED_API_KEY", "env-key")
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", "--method", "spatial", "--budget", "300", "--allowed-methods", "spatial,hired", "--max-budget", "0.5",
         "--allow-image-host", "img.example.com", "--batch-wait-timeout-s", "0.02", "--num-gpus", "1", "--l-init", "2"]
    )
    config = serve_cli.config_from_args(args)
    assert (config.drop.method, str(config.drop.budget), config.allowed_methods) == ("spatial", "300", ("spatial", "hired"))
    assert config.drop.l_init == 2  # every dropping setting reaches the endpoint
    assert config.api_key == "env-key" and config.allowed_image_hosts == ("img.example.com",)
    assert config.batch_wait_timeout_s == pytest.approx(0.02) and config.llm.num_gpus == 1.0


def _parse(body: dict, **config) -> object:
    """``body`` as the tiny model's server reads it (requests name the model served)."""
    return ChatCompletionRequest.parse(body).to_chat(ServeConfig.from_dict({"model": {"name": MODEL}, **config}), MAX_VISUAL)


def test_parse_request_and_override():
    body = chat_body("data:image/png;base64,AAAA", temperature=0, stop="\n", hired={"method": "spatial", "budget": "10%"})
    body["messages"].insert(0, {"role": "system", "content": "Be brief."})
    parsed = _parse(body)
    # the system text goes before the user's, the image before the text (as LLaVA was trained)
    assert parsed.messages == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Be brief.\n{PROMPT}"}]}]
    assert parsed.drop == DropConfig(method="spatial", budget=0.1)
    assert parsed.options == GenerateOptions(max_new_tokens=8, stop=("\n",))
    assert parsed.images == (("data:image/png;base64,AAAA", "messages[1].content[1].image_url.url"),)
    assert _parse(chat_body("data:,", hired={"method": "full"})).drop.method == "full"
    assert _parse(chat_body("data:,")).drop == DropConfig(budget=0.2)


@pytest.mark.parametrize(
    "change, status, code, param",
    [
        (lambda b: b.pop("messages"), 400, "missing_field", "messages"),
        (lambda b: b.update(model="gpt-4o"), 404, "model_not_found", "model"),
        (lambda b: b.update(max_tokens=10_000), 400, "invalid_value", "max_tokens"),
        (lambda b: b.update(temperature="hot"), 400, "invalid_type", "temperature"),
        (lambda b: b.update(n=2), 400, "unsupported_value", "n"),
        (lambda b: b["messages"].append({"role": "assistant", "content": "hi"}), 400, "invalid_value", "messages[1].role"),
        (lambda b: b["messages"][0]["content"].append(b["messages"][0]["content"][1]), 400, "too_many_images",
         "messages[0].content[2].image_url.url"),
        (lambda b: b.update(hired={"budget": 0.9}), 400, "budget_out_of_range", "hired.budget"),
        (lambda b: b.update(hired={"method": "prumerge"}), 400, "method_not_allowed", "hired.method"),
        (lambda b: b.update(hired={"method": "full"}), 400, "budget_out_of_range", "hired.method"),
        (lambda b: b.update(hired={"method": "full", "budget": 5}), 400, "invalid_value", "hired.budget"),
        (lambda b: b.update(hired={"budgett": 5}), 400, "unknown_field", "hired.budgett"),
    ],
)
def test_parse_request_errors(change, status, code, param):
    body = chat_body("data:,")
    change(body)
    with pytest.raises(ApiError) as caught:
        _parse(body, allowed_methods=("hired", "full"), max_budget=0.5, max_tokens_limit=64, max_images_per_request=1)
    error = caught.value
    assert (error.status, error.code, error.param) == (status, code, param)
    assert error.body()["error"]["message"]


def test_data_urls_and_remote_hosts():
    assert decode_data_url(data_url(b"abc"), "p", 10) == b"abc"
    with pytest.raises(ApiError, match="not valid base64"):
        decode_data_url("data:image/png;base64,@@@", "p", 10)
    with pytest.raises(ApiError) as caught:
        decode_data_url(data_url(b"x" * 100), "p", 10)
    assert caught.value.status == 413
    check_remote_url("https://img.example.com/a.png", "p", ("img.example.com",))
    check_remote_url("http://127.0.0.1:81/a.png", "p", ("127.0.0.1:81",))
    for url in ("http://169.254.169.254/latest", "http://127.0.0.1:82/a.png", "file:///etc/passwd"):
        with pytest.raises(ApiError):
            check_remote_url(url, "p", ("img.example.com", "127.0.0.1:81"))


class ByteTokenizer:
    """Ids 0-255 are UTF-8 bytes (so a character may take several tokens), 256 is EOS."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def _streamed(text: str, stop: tuple[str, ...], end: bool = True) -> tuple[list[str], TextStream]:
    stream = TextStream(ByteTokenizer(), stop, end_ids={256})
    deltas = [stream.push(token) for token in [*text.encode(), *([256] if end else [])]]
    return deltas + [stream.finish()], stream


def test_text_stream_deltas_concatenate_to_the_non_streamed_text():
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "\n", "é", "€", "🙂", "#", "##"]
    stops = [(), ("\n",), ("##",), ("b #", "a"), (" ", "🙂a")]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        stop = rng.choice(stops)
        deltas, stream = _streamed(text, stop, end=rng.random() < 0.5)
        # the server's non-streamed text (HiredLLM._generate_batch)
        expected = truncate_at_stop(text.strip(), stop).strip()
        assert "".join(deltas) == expected, (text, stop, deltas)
        assert stream.stopped == (expected != text.strip()), (text, stop)


def test_text_stream_holds_back_only_what_may_change():
    deltas, _ = _streamed(" héllo wor###ld", ("###",))
    # the leading space and the first byte of "é" wait, the space after "hello" waits for "w",
    # and "#", "##" wait as possible starts of the stop string
    assert deltas == ["", "h", "", "é", "l", "l", "o", "", " w", "o", "r", *[""] * 7]
    assert _streamed("€", ())[0] == ["", "", "€", "", ""]  # no U+FFFD for the first two bytes
    deltas, stream = _streamed("a b\nc", ("\n",), end=False)
    assert deltas == ["a", "", " b", "", "", ""] and stream.done and stream.stopped  # cut before "c"


# -- slow: one Serve deployment on loopback -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


IMAGE_SIZES = [(480, 640), (336, 336), (700, 300), (500, 900)]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [random_image(h, w, seed=i) for i, (h, w) in enumerate(IMAGE_SIZES)]


@pytest.fixture(scope="module")
def image_host(images):
    """A loopback HTTP server holding ``/image.png`` (images[0]): the allowlisted remote host."""
    payload = png_bytes(images[0])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/image.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(payload) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def server(ray_local, image_host) -> str:
    """Base URL of the application deployed from the committed YAML's args, with test limits."""
    from ray import serve

    from pipeline.serve.app import start

    args = yaml_args()
    args = args | {
        # the tiny model the direct API runs (the committed YAML serves the testbed), in fp32 like it
        "model": args["model"] | {"name": MODEL, "dtype": "float32"},
        "api_key": KEY,
        "allowed_image_hosts": [image_host],
        "max_image_bytes": 500_000,
        "decode": {"max_pixels": 4_000_000},
        "max_tokens_limit": 64,
        "max_images_per_request": 2,
    }
    url = start(ServeConfig.from_dict(args), host="127.0.0.1", port=free_port())
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def direct(tiny_next):
    """The direct API on the same built-in model: ``direct(image, drop, max_new_tokens) -> Result``."""
    model, processor = tiny_next
    vlm = HiredVLM(model, processor, DropConfig(budget=0.2))

    def answer(image: Image.Image, drop: DropConfig = DropConfig(budget=0.2), max_new_tokens: int = 8):
        return vlm.run([image], PROMPT, GenerateOptions(max_new_tokens=max_new_tokens), drop)[0]

    return answer


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.mark.slow
def test_openai_client_answer_equals_direct_api(client, images, direct):
    expected = direct(images[0], max_new_tokens=12)
    body = chat_body(data_url(png_bytes(images[0])), max_tokens=12)
    reply = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=12)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == ("length" if expected.generation.generated_tokens == 12 else "stop")
    assert reply.usage.visual_tokens == expected.encoded.num_tokens == 576  # 20% of 2880
    assert reply.usage.completion_tokens == expected.generation.generated_tokens
    assert reply.usage.prompt_tokens == expected.generation.prompt_tokens

    stream = client.chat.completions.create(
        model=MODEL, messages=body["messages"], max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens


@pytest.mark.slow
def test_engine_callbacks_see_each_rows_tokens(tiny_next, images):
    from pipeline.model.engine import Engine, EngineRequest

    model, processor = tiny_next
    vlm = HiredVLM(model, processor, DropConfig(budget=0.2))
    encoded = vlm.encode(images[:3])
    options = GenerateOptions(max_new_tokens=10)
    plain = vlm.generate(encoded, [PROMPT] * 3, options)
    seen: list[list[int]] = [[], [], []]
    done: dict[int, object] = {}
    engine = Engine(vlm)
    for row, e in enumerate(encoded):
        engine.submit(EngineRequest(
            vlm.prompt_ids(PROMPT), [e], options, lambda g, row=row: done.__setitem__(row, g),
            on_token=lambda t, row=row: seen[row].append(t) is not None,  # never ends a row early
        ))
    engine.run()
    assert [(done[r].text, done[r].generated_tokens) for r in range(3)] == [(g.text, g.generated_tokens) for g in plain]
    for row, generation in enumerate(plain):
        assert seen[row] == generation.token_ids  # one call per token, end tokens not passed on
        stream = vlm.text_stream()
        text = "".join(stream.push(t) for t in seen[row]) + stream.finish()
        assert text == generation.text and len(stream.ids) == generation.generated_tokens


def _sse(server: str, body: dict) -> list[tuple[float, dict]]:
    """``(arrival time, event)`` per server-sent event of a streamed completion, read as it arrives."""
    import requests

    events = []
    with requests.post(
        f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, stream=True, timeout=60
    ) as reply:
        assert reply.status_code == 200, reply.text
        for line in reply.iter_lines(chunk_size=None):
            if line.startswith(b"data: "):
                data = line[len(b"data: "):]
                events.append((time.perf_counter(), {"done": True} if data == b"[DONE]" else json.loads(data)))
    return events


def _content(events: list[tuple[float, dict]]) -> list[tuple[float, str]]:
    return [(t, e["choices"][0]["delta"]["content"]) for t, e in events
            if e.get("choices") and e["choices"][0]["delta"].get("content")]


@pytest.mark.slow
def test_stream_is_incremental(server, client, images):
    body = chat_body(data_url(png_bytes(images[3])), max_tokens=48, stream=True, stream_options={"include_usage": True})
    events = _sse(server, body)
    content = _content(events)
    assert events[-1][1] == {"done": True} and len(content) > 1
    # The server's decoding time for this request (first to last token). Buffered streaming sent
    # every piece in one burst after it; token streaming spreads the pieces over it. Pieces can
    # only start a few tokens late and end a few tokens early (held-back whitespace), so at least
    # half of it separates the first and last piece, however loaded the machine is.
    hired = events[-2][1]["hired"]
    decode_s = hired["generate_s"] - hired["ttft_s"]
    spread = content[-1][0] - content[0][0]
    assert events[-2][1]["usage"]["completion_tokens"] > 24 and decode_s > 0
    assert spread > 0.5 * decode_s, (spread, hired, [round(t - content[0][0], 4) for t, _ in content])
    reply = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=48)
    assert "".join(text for _, text in content) == reply.choices[0].message.content


@pytest.mark.slow
def test_stream_with_stop_string_equals_non_streamed(server, client, images):
    body = chat_body(data_url(png_bytes(images[0])), max_tokens=24)
    plain = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=24)
    text = plain.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # two characters from the middle of the answer
    assert stop.strip(), text
    reply = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=24, stop=stop)
    assert reply.choices[0].message.content == truncate_at_stop(text, (stop,)).strip()
    events = _sse(server, body | {"stop": stop, "stream": True, "stream_options": {"include_usage": True}})
    assert "".join(piece for _, piece in _content(events)) == reply.choices[0].message.content
    finishes = [e["choices"][0]["finish_reason"] for _, e in events if e.get("choices")]
    assert finishes[-1] == reply.choices[0].finish_reason == "stop"
    # decoding ended at the stop in both modes, and both count the same tokens
    streamed = events[-2][1]["usage"]
    assert streamed["completion_tokens"] == reply.usage.completion_tokens < plain.usage.completion_tokens
    assert streamed["total_tokens"] == reply.usage.total_tokens


@pytest.mark.slow
def test_concurrent_streams_equal_non_streamed_answers(server, client, images):
    # two option groups of three, so batches hold several groups and groups several rows
    bodies = [chat_body(data_url(png_bytes(images[i % len(images)])), max_tokens=(8, 20)[i % 2]) for i in range(6)]
    expected = [
        client.chat.completions.create(model=MODEL, messages=b["messages"], max_tokens=b["max_tokens"]).choices[0].message.content
        for b in bodies
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        streamed = list(pool.map(lambda b: _sse(server, b | {"stream": True}), bodies))
    assert ["".join(piece for _, piece in _content(events)) for events in streamed] == expected
    assert all(events[-1][1] == {"done": True} for events in streamed)


@pytest.mark.slow
def test_budget_override_equals_direct_api(client, images, direct):
    drop = DropConfig(method="spatial", budget=300)
    reply = client.chat.completions.create(
        model=MODEL, messages=chat_body(data_url(png_bytes(images[2])))["messages"], max_tokens=8,
        extra_body={"hired": {"method": "spatial", "budget": 300}},
    )
    expected = direct(images[2], drop)
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.visual_tokens == 300
    assert reply.model_extra["hired"]["method"] == "spatial"


@pytest.mark.slow
def test_concurrent_questions_about_one_image_keep_their_own_tokens(client, images, tiny_next):
    """hired-cdpp over HTTP: four questions about one image sent at once (the vision replica
    batches them), each answered as the direct API answers it from that question's tokens."""
    model, processor = tiny_next
    vlm = HiredVLM(model, processor)
    drop, options = DropConfig(method="hired-cdpp", budget=0.1), GenerateOptions(max_new_tokens=8)
    questions = ["What colour is the car?", "Is there a dog on the left?", "Count the red squares.", PROMPT]
    own = [vlm.run([images[0]], question, options, drop)[0].text for question in questions]
    # the test can tell: tokens chosen without the question give other answers
    blind = [g.text for g in vlm.generate(vlm.encode([images[0]] * len(questions), drop), questions, options)]
    assert own != blind
    url = data_url(png_bytes(images[0]))

    def ask(question: str):
        return client.chat.completions.create(
            model=MODEL, messages=chat_body(url, question)["messages"], max_tokens=8,
            extra_body={"hired": {"method": "hired-cdpp", "budget": 0.1}},
        )

    with ThreadPoolExecutor(len(questions)) as pool:
        replies = list(pool.map(ask, questions))
    assert [reply.choices[0].message.content for reply in replies] == own
    assert all(reply.usage.visual_tokens == 288 for reply in replies)  # 10% of 2880


@pytest.mark.slow
def test_32_concurrent_requests_are_batched_and_correct(client, server, images, direct):
    import requests

    expected = [direct(image).text for image in images]
    urls = [data_url(png_bytes(image)) for image in images]

    def ask(i: int) -> str:
        body = chat_body(urls[i % len(urls)])
        reply = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=8)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    assert answers == [expected[i % len(expected)] for i in range(32)]
    stats = requests.get(f"{server}/v1/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert stats["vision"]["max_batch_size"] > 1 and stats["llm"]["max_batch_size"] > 1, stats


def _bad_cases(image_host: str) -> list[tuple[str, dict, int, str]]:
    """``(name, request kwargs, status, error code)`` for every kind of bad input."""
    good = png_bytes(random_image(64, 64))
    auth = {"Authorization": f"Bearer {KEY}"}

    def with_url(url: str, **extra) -> dict:
        return {"json": chat_body(url, **extra), "headers": auth}

    three_images = chat_body(data_url(good))
    three_images["messages"][0]["content"] += [{"type": "image_url", "image_url": {"url": data_url(good)}}] * 2
    huge = Image.new("RGB", (2100, 2000), (200, 30, 30))  # 4.2 Mpx: over the 4 Mpx limit, a small file
    return [
        ("malformed json", {"data": b'{"model": ', "headers": auth}, 400, "invalid_json"),
        ("missing messages", {"json": {"model": MODEL}, "headers": auth}, 400, "missing_field"),
        ("missing model", {"json": {"messages": []}, "headers": auth}, 400, "missing_field"),
        ("unknown model", {"json": chat_body(data_url(good)) | {"model": "gpt-4o"}, "headers": auth}, 404, "model_not_found"),
        ("bad base64", with_url("data:image/png;base64,iVBOR@@@"), 400, "invalid_base64"),
        ("not base64 data url", with_url("data:text/plain,hello"), 400, "invalid_image_url"),
        ("not an image", with_url(data_url(b"<html>not an image</html>")), 400, "invalid_image"),
        ("truncated png", with_url(data_url(good[: len(good) // 2])), 400, "invalid_image"),
        ("image over byte limit", with_url(data_url(b"\x89PNG" + b"\0" * 600_000)), 413, "image_too_large"),
        ("image over pixel limit", with_url(data_url(png_bytes(huge))), 400, "invalid_image"),
        ("body over limit", {"data": b"x" * 3_000_000, "headers": auth}, 413, "request_too_large"),
        ("too many images", {"json": three_images, "headers": auth}, 400, "too_many_images"),
        ("remote url refused", with_url("http://169.254.169.254/latest/meta-data"), 400, "remote_image_disabled"),
        ("allowlisted port only", with_url(f"http://localhost:{image_host.split(':')[1]}/image.png"), 400, "remote_image_disabled"),
        ("remote 404", with_url(f"http://{image_host}/missing.png"), 400, "image_fetch_failed"),
        ("budget below range", with_url(data_url(good), hired={"budget": 10}), 400, "budget_out_of_range"),
        ("budget above range", with_url(data_url(good), hired={"budget": 5000}), 400, "budget_out_of_range"),
        ("budget not a number", with_url(data_url(good), hired={"budget": "lots"}), 400, "invalid_budget"),
        ("method not allowed", with_url(data_url(good), hired={"method": "prumerge"}), 400, "method_not_allowed"),
        ("max_tokens too large", with_url(data_url(good), max_tokens=1000), 400, "invalid_value"),
        ("no api key", {"json": chat_body(data_url(good))}, 401, "invalid_api_key"),
        ("wrong api key", {"json": chat_body(data_url(good)), "headers": {"Authorization": "Bearer nope"}}, 401, "invalid_api_key"),
    ]


@pytest.mark.slow
def test_every_bad_input_gets_its_error_and_the_server_keeps_serving(server, image_host, images, direct):
    import requests

    good = chat_body(data_url(png_bytes(images[1])))
    expected = direct(images[1]).text
    for name, kwargs, status, code in _bad_cases(image_host):
        reply = requests.post(f"{server}/v1/chat/completions", timeout=60, **kwargs)
        assert reply.status_code == status, (name, reply.text)
        error = reply.json()["error"]
        assert error["code"] == code and error["message"] and error["type"] == "invalid_request_error", (name, error)
        assert set(error) == {"message", "type", "param", "code"}, name
        after = requests.post(f"{server}/v1/chat/completions", json=good, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == expected, name


@pytest.mark.slow
def test_allowlisted_remote_image_equals_direct_api(client, image_host, images, direct):
    reply = client.chat.completions.create(
        model=MODEL, messages=chat_body(f"http://{image_host}/image.png")["messages"], max_tokens=8
    )
    assert reply.choices[0].message.content == direct(images[0]).text


@pytest.mark.slow
def test_models_health_and_auth(client, server):
    import requests

    assert [m.id for m in client.models.list().data] == [MODEL]
    health = requests.get(f"{server}/health", timeout=30)
    assert health.status_code == 200 and health.json()["max_visual_tokens"] == MAX_VISUAL
    assert requests.get(f"{server}/v1/models", timeout=30).status_code == 401
    missing = requests.get(f"{server}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
