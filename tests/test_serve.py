"""``drnet serve``: the JSON API directly, the page in headless Chromium, the box rule's JS port.

The browser is driven over the Chrome DevTools Protocol (``chromium_devtools.py``: a minimal
websocket client, no dependency). Screenshots of the page's states go
to ``tmp_path`` and, when ``DRNET_SCREENSHOTS=DIR`` is set, to DIR as well.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from chromium_devtools import CHROMIUM, DevTools, open_browser
from helpers import REPO, TINY_CHANNELS, _child_env, save_tiny_model
from PIL import Image

from drnet.models.loading import ModelCard, load_model
from drnet.serve import api, app
from drnet.serve.api import ServedModel

pytestmark = pytest.mark.usefixtures("one_thread")

CLASS_NAMES = ["circle", "square", "stripe", "dots", "ring", "cross"]
SEG_CLASSES = 4


# ----------------------------------------------------------------------------- fixtures


def _image_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def scene_image(height: int = 90, width: int = 120) -> np.ndarray:
    """A bright square and a bar on a dark ground: structure for the class maps to follow."""
    image = np.full((height, width, 3), 30, np.uint8)
    image[20:60, 25:65] = (230, 200, 40)
    image[65:80, 70:115] = (40, 120, 230)
    return image


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny classifier run and a tiny segmenter run (random weights, model.json cards)."""
    root = tmp_path_factory.mktemp("serve-runs")
    torch.manual_seed(0)
    folders = {"classifier": root / "cls", "segmenter": root / "seg"}
    save_tiny_model(folders["classifier"] / "checkpoint_best.pth", len(CLASS_NAMES))
    ModelCard(
        model="drn_d_22", num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES,
        channels=list(TINY_CHANNELS), crop_size=64, resize_size=64,
    ).save(folders["classifier"])  # fmt: skip
    save_tiny_model(folders["segmenter"] / "checkpoint_best.pth", SEG_CLASSES, segmentation=True)
    ModelCard(
        model="drn_d_22", num_classes=SEG_CLASSES, task="segmentation",
        channels=list(TINY_CHANNELS), class_names=["ground", "sun", "sea", "sky"],
    ).save(folders["segmenter"])  # fmt: skip
    return folders


@pytest.fixture(scope="module")
def served(runs) -> list[ServedModel]:
    # fast=False: the fast path's first call times three layouts, seconds the tests need not pay;
    # float32: the answers are compared with the plain model's (auto is bf16 on CPUs that have it)
    served = []
    for number, kind in enumerate(("classifier", "segmenter"), start=1):
        model, card = load_model(runs[kind])
        served.append(
            ServedModel.create(
                model, card, str(runs[kind]), id=f"m{number}", fast=False, dtype="float32"
            )
        )
    return served


def start(models, **settings) -> app.DrnetServer:
    server = app.make_server(models, port=0, settings=app.ServeSettings(**settings))
    app.serve_in_thread(server)
    return server


@pytest.fixture(scope="module")
def server(served):
    server = start(served)
    yield server
    server.shutdown()
    server.server_close()


def call(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET (``data`` None) or POST."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        assert b"Traceback" not in body
        return error.code, json.loads(body)


def post_image(server, data: bytes, query: str = "", content_type: str = "image/png"):
    return call(f"{server.url}api/predict{query}", data, {"Content-Type": content_type})


@pytest.fixture(scope="module")
def answer(server) -> dict:
    status, body = post_image(server, _image_bytes(scene_image()), "?activations=1")
    assert status == 200, body
    return body


# ----------------------------------------------------------------------------- the JSON API


def test_models_lists_every_loaded_model(server):
    status, body = call(f"{server.url}api/models")
    assert status == 200
    assert [(m["id"], m["task"]) for m in body["models"]] == [
        ("m1", "classification"),
        ("m2", "segmentation"),
    ]
    assert body["models"][0]["classes"] == CLASS_NAMES
    assert body["models"][1]["num_classes"] == SEG_CLASSES
    assert {m["dtype"] for m in body["models"]} == {"float32"}


def _decode_png(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def _check_activations(levels: list[dict], input_size) -> None:
    assert [lv["level"] for lv in levels] == ["stem", *[f"layer{i}" for i in range(1, 9)]]
    assert levels[0]["size"] == list(input_size)  # DRN-D's stem keeps the resolution
    for level in levels:
        assert _decode_png(level["png"]).shape == (*level["size"], 3)
        assert _decode_png(level["png_max_channel"]).shape == (*level["size"], 3)
        assert 0 <= level["max_channel"] < level["channels"]
        big = min(level["size"]) >= 8
        assert (level["gridding_score"] is not None) == big


def test_classifier_answer_matches_the_model(answer, served):
    """Top-5 = the softmax of the classifier's logits on the eval input; boxes lie in the image;
    the class map decodes to [C, h, w]; activations of every level."""
    from drnet.data.classification import full_image_transform

    result = answer["results"][0]
    assert answer["image"] == {"name": "upload", "width": 120, "height": 90}
    assert result["task"] == "classification" and result["image_size"] == [90, 120]
    card = served[0].card
    x = full_image_transform(card.resize_size, card.mean, card.std)(Image.fromarray(scene_image()))
    with torch.no_grad():
        probs = served[0].model(x[None])[0].softmax(0)
    top = probs.topk(5)
    assert [t["index"] for t in result["top5"]] == top.indices.tolist()
    assert [t["class"] for t in result["top5"]] == [CLASS_NAMES[i] for i in top.indices]
    assert [t["score"] for t in result["top5"]] == pytest.approx(top.values.tolist(), abs=1e-4)
    for entry in result["top5"]:
        for box in entry["boxes"].values():
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= 120 and 0 <= y1 < y2 <= 90
    class_map = result["class_map"]
    count, h, w = class_map["shape"]
    assert count == len(CLASS_NAMES) and class_map["classes"] == list(range(count))
    assert class_map["input_size"] == list(x.shape[-2:]) and (h, w) == (8, 11)
    assert len(base64.b64decode(class_map["data"])) == 4 * count * h * w
    assert len(base64.b64decode(class_map["pixel_max"])) == 4 * x.shape[-2] * x.shape[-1]
    _check_activations(result["activations"], x.shape[-2:])
    assert {"preprocess", "activations"} <= set(result["timings_ms"])


def test_segmenter_answer_matches_segment_infer(answer, served):
    """The label map equals the arg-max of drnet.tasks.segment_infer's probabilities; shares are
    the label counts; the colour PNG uses the palette."""
    from drnet.data.classification import full_image_transform
    from drnet.data.palettes import get_palette
    from drnet.tasks.segment_infer import predict_probs

    result = answer["results"][1]
    assert result["task"] == "segmentation" and result["input_size"] == [90, 120]
    card = served[1].card
    x = full_image_transform(None, card.mean, card.std)(Image.fromarray(scene_image()))[None]
    with torch.no_grad():
        expected = predict_probs(served[1].model, x).argmax(1)[0].numpy()
    labels = _decode_png(result["label_png"])
    assert (labels == expected).mean() > 0.999  # arg-max ties may break either way
    colours = _decode_png(result["color_png"])
    assert (colours == get_palette(SEG_CLASSES)[labels]).all()
    shares = {c["index"]: c["share"] for c in result["classes"]}
    counts = np.bincount(labels.ravel(), minlength=SEG_CLASSES) / labels.size
    assert [shares[c] for c in range(SEG_CLASSES)] == pytest.approx(counts.tolist(), abs=1e-6)
    assert result["classes"][1]["name"] == "sun" and result["classes"][1]["color"].startswith("#")
    _check_activations(result["activations"], (90, 120))


def test_multipart_upload_and_one_model(server, answer):
    boundary = "drnetboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + _image_bytes(scene_image())
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, result = post_image(
        server, body, "?model=m1", f"multipart/form-data; boundary={boundary}"
    )
    assert status == 200, result
    assert result["image"]["name"] == "a.png" and [r["id"] for r in result["results"]] == ["m1"]
    assert result["results"][0]["top5"] == answer["results"][0]["top5"]


@pytest.mark.parametrize(
    ("data", "query", "status", "words"),
    [
        (b"just some text\n", "?filename=notes.txt", 400, "notes.txt is not an image"),
        (b"", "", 400, "empty upload"),
        (_image_bytes(np.zeros((4, 40, 3), np.uint8)), "", 400, "at least 8 px"),
        (_image_bytes(scene_image())[:60], "", 400, "upload"),  # truncated PNG
        (_image_bytes(scene_image()), "?model=m7", 404, "unknown model m7"),
        (_image_bytes(scene_image()), "?threshold=high", 400, "threshold"),
        (_image_bytes(scene_image()), "?threshold=nan", 400, "threshold=nan"),
        (_image_bytes(scene_image()), "?threshold=inf", 400, "from 0 to 1"),
        (_image_bytes(scene_image()), "?threshold=2", 400, "from 0 to 1"),
        (_image_bytes(scene_image()), "?threshold=-1", 400, "from 0 to 1"),
        (_image_bytes(scene_image()), "?treshold=0.5", 400, "unknown parameter treshold"),
        (_image_bytes(scene_image()), "?activations=maybe", 400, "activations"),
    ],
)
def test_bad_requests_get_a_json_error(server, data, query, status, words):
    got, body = post_image(server, data, query, "text/plain" if b"text" in data else "image/png")
    assert got == status and words in body["error"], body
    assert "\n" not in body["error"]


def test_too_large_uploads_get_413(served):
    server = start(served, max_upload_bytes=2000, max_pixels=5000)
    try:
        got, body = post_image(
            server, _image_bytes(np.random.randint(0, 255, (60, 60, 3), np.uint8))
        )
        assert got == 413 and "--max-upload-mb" in body["error"]
        got, body = post_image(server, _image_bytes(np.zeros((100, 100, 3), np.uint8)))
        assert got == 413 and "100x100" in body["error"] and "--max-pixels" in body["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_unknown_route_and_page(server):
    status, body = call(f"{server.url}nowhere")
    assert status == 404 and "no such page" in body["error"]
    with urllib.request.urlopen(server.url, timeout=30) as page:
        html = page.read().decode()
    assert "drnetBoxRule" in html and "/api/predict" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere


def test_concurrent_requests_are_queued_and_both_answered(served, monkeypatch, tmp_path):
    """Two requests at once: both answered, inference never runs twice at the same time, and
    nothing is written to disk."""
    running, most, lock = [0], [0], threading.Lock()
    real = app.predict

    def counting(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(app, "predict", counting)
    monkeypatch.chdir(tmp_path)
    server = start(served)
    try:
        answers: list = [None, None]

        def ask(n: int) -> None:
            answers[n] = post_image(server, _image_bytes(scene_image()), "?model=m1")

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        server.shutdown()
        server.server_close()
    assert [a[0] for a in answers] == [200, 200]
    assert answers[0][1]["results"][0]["top5"] == answers[1][1]["results"][0]["top5"]
    assert most[0] == 1
    assert list(tmp_path.iterdir()) == []


def test_unexpected_failure_is_one_line_500(served, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of cheese\nsecond line")

    monkeypatch.setattr(app, "predict", broken)
    server = start(served)
    try:
        status, body = post_image(server, _image_bytes(scene_image()))
    finally:
        server.shutdown()
        server.server_close()
    assert status == 500 and body == {"error": "internal error: RuntimeError: out of cheese"}


def test_bf16_where_native(runs, monkeypatch):
    """``--dtype auto`` (serve's default) computes in bf16 where the CPU has it (mocked here)."""
    import drnet.engine.precision as precision

    model, card = load_model(runs["classifier"])
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert ServedModel.create(model, card, "x", id="a").describe()["dtype"] == "bfloat16"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert ServedModel.create(model, card, "x", id="a").describe()["dtype"] == "float32"


def test_fast_path_is_the_default_and_warms_up_at_start(runs):
    """The fast path chooses its layout on its first input: warm_up pays that at start; its
    answers are the plain model's."""
    from drnet.speed.inference import FastOnFirstCall

    model, card = load_model(runs["classifier"])
    fast = ServedModel.create(model, card, "x", id="a", dtype="float32")
    assert isinstance(fast.runner, FastOnFirstCall) and fast.runner.fast is None
    fast.warm_up()
    assert fast.runner.fast is not None
    plain = ServedModel.create(model, card, "x", id="a", fast=False, dtype="float32")
    assert plain.runner is model
    image = Image.fromarray(scene_image())
    got, expected = api.predict(fast, image), api.predict(plain, image)
    assert [t["index"] for t in got["top5"]] == [t["index"] for t in expected["top5"]]
    scores = [t["score"] for t in expected["top5"]]
    assert [t["score"] for t in got["top5"]] == pytest.approx(scores, abs=1e-4)


def test_loopback_hosts():
    assert app.is_loopback("127.0.0.1") and app.is_loopback("::1")
    assert app.is_loopback("localhost") and not app.is_loopback("0.0.0.0")


def test_page_ships_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]["drnet"]
    assert "serve/static/*" in package_data and "assets/**/*" in package_data
    assert b"<html" in app.page_html()
    examples = app.example_images()  # drnet/assets/examples, under assets/**/*
    assert sorted(examples) == ["scene-sandal.png", "scene-three-items.png", "scene-trouser.png"]
    for data in examples.values():
        assert data.startswith(b"\x89PNG")


def test_cli_serves_runs_side_by_side(runs, tmp_path):
    """``drnet serve --weights A --weights B --port 0`` prints its URL and lists both models."""
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "drnet", "serve", "--weights", runs["classifier"],
            "--weights", runs["segmenter"], "--port", "0", "--device", "cpu",
            "--no-fast"]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=_child_env(),
            cwd=tmp_path,
        )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and process.poll() is None:
            for line in log.read_text().splitlines():
                if line.startswith("drnet serve: open "):
                    url = line.split()[3]
            time.sleep(0.2)
        assert url and url.startswith("http://127.0.0.1:"), log.read_text()
        status, body = call(f"{url}api/models")
        assert status == 200 and [m["task"] for m in body["models"]] == [
            "classification",
            "segmentation",
        ]
        assert "m1: drn_d_22 classification" in log.read_text()
    finally:
        process.terminate()
        process.wait(30)


def test_cli_needs_weights(capsys):
    from helpers import run_cli

    rc, _, err = run_cli(capsys, "serve", "--port", "0")
    assert rc == 2 and "--weights" in err


# ----------------------------------------------------------------------------- the browser

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with open_browser(tmp_path_factory.mktemp("chromium")) as tools:
        yield tools


def _screenshot_dirs(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path]
    if os.environ.get("DRNET_SCREENSHOTS"):
        dirs.append(Path(os.environ["DRNET_SCREENSHOTS"]))
        dirs[-1].mkdir(parents=True, exist_ok=True)
    return dirs


def shoot(browser: DevTools, tmp_path: Path, name: str) -> Path:
    first = browser.screenshot(tmp_path / name)
    for folder in _screenshot_dirs(tmp_path)[1:]:
        shutil.copy(first, folder / name)
    assert first.stat().st_size > 10_000
    return first


def open_page(browser: DevTools, url: str) -> None:
    browser.call("Page.navigate", url=url)
    browser.wait_for("document.querySelector('#status')?.dataset.state === 'ready'")


def choose_models(browser: DevTools, *ids: str) -> None:
    browser.js(
        "document.querySelectorAll('#model-choice input').forEach(box => {"
        f" box.checked = {json.dumps(list(ids))}.includes(box.value); }})"
    )


def upload_and_wait(browser: DevTools, path: Path, count: int) -> str:
    browser.upload("#file", path)
    browser.wait_for(
        f"document.querySelectorAll('section.image').length === {count} || "
        "document.querySelector('#status').dataset.state === 'error'"
    )
    return browser.wait_for(
        "['done', 'error'].includes(document.querySelector('#status').dataset.state) && "
        "document.querySelector('#status').dataset.state"
    )


@needs_chromium
def test_page_in_headless_chromium(browser, server, answer, tmp_path):
    """Upload an image, read the top-5, move the threshold and see the box change, switch to
    the segmenter and see the overlay, upload a text file and see the error."""
    open_page(browser, server.url)
    image = tmp_path / "scene.png"
    Image.fromarray(scene_image()).save(image)
    choose_models(browser, "m1")
    assert upload_and_wait(browser, image, 1) == "done"
    names = browser.js(
        "[...document.querySelectorAll('.classifier .top5 .name')].map(e => e.textContent)"
    )
    assert names == [t["class"] for t in answer["results"][0]["top5"]]
    shoot(browser, tmp_path, "serve-classifier.png")

    # the JS rule draws the API's own box at the default threshold
    box_at_default = [
        float(v) for v in browser.js("document.querySelector('.box-text').dataset.box").split(",")
    ]
    assert box_at_default == pytest.approx(
        answer["results"][0]["top5"][0]["boxes"]["pixel"], abs=0.06
    )
    boxes = {}
    for t in ("0", "0.95"):
        browser.js(
            "(() => { const s = document.querySelector('.classifier .threshold');"
            f" s.value = '{t}'; s.dispatchEvent(new Event('input')); }})()"
        )
        boxes[t] = browser.js("document.querySelector('.box-text').dataset.box")
    assert boxes["0"] != boxes["0.95"]
    shoot(browser, tmp_path, "serve-threshold.png")

    choose_models(browser, "m2")
    assert upload_and_wait(browser, image, 2) == "done"
    browser.wait_for("document.querySelector('.segmenter')?.dataset.drawn === '1'")
    centre = (
        "(() => { const s = document.querySelector('.segmenter .overlay-opacity');"
        " s.value = '{v}'; s.dispatchEvent(new Event('input'));"
        " const c = document.querySelector('.segmenter canvas');"
        " return [...c.getContext('2d').getImageData(c.width / 2, c.height / 3, 1, 1).data]; })()"
    )
    plain, overlaid = (browser.js(centre.replace("{v}", v)) for v in ("0", "1"))
    assert plain != overlaid
    legend = browser.js("[...document.querySelectorAll('.segmenter .legend li')].length")
    assert legend == SEG_CLASSES
    browser.js(centre.replace("{v}", "0.6"))
    shoot(browser, tmp_path, "serve-segmenter.png")

    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    assert upload_and_wait(browser, text, 2) == "error"
    message = browser.js("document.querySelector('#error').textContent")
    assert "notes.txt is not an image" in message
    assert browser.js("!document.querySelector('#error').hidden")
    shoot(browser, tmp_path, "serve-error.png")
    assert browser.errors() == []


@needs_chromium
def test_box_rule_port_agrees_with_python(browser, server):
    """The page's boxRule gives drnet.tasks.boxes' boxes, cell and pixel, on random maps with
    ties, sizes that are not multiples of 8, a constant class and thresholds that empty the
    region (the peak fallback)."""
    from drnet.tasks.boxes import boxes_from_class_map, scale_boxes

    open_page(browser, server.url)
    generator = torch.Generator().manual_seed(3)
    cases = [
        ((61, 83), (100, 130), 5, False),
        ((40, 40), (40, 40), 3, True),
        ((30, 57), (45, 90), 4, False),
    ]
    thresholds = [0.0, 0.2, 0.5, 0.9, 1.0]
    for input_size, image_size, count, quantised in cases:
        h, w = -(-input_size[0] // 8), -(-input_size[1] // 8)
        class_map = torch.randn(count, h, w, generator=generator)
        if quantised:  # exact ties between classes, at cells and between them
            class_map = (class_map * 2).round() / 2
        class_map[-1] = 0.7  # a constant map: minmax makes it all ones
        result = SimpleNamespace(
            class_map=class_map, classes=torch.arange(count), input_size=input_size,
            image_size=image_size, stride=8,
        )  # fmt: skip
        payload = api.class_map_payload(result, [str(c) for c in range(count)])
        for resolution in ("cell", "pixel"):
            expected, empty = boxes_from_class_map(
                class_map, list(range(count)), thresholds, input_size, resolution=resolution
            )
            expected = scale_boxes(expected, input_size, image_size)
            got = browser.js(
                f"(() => {{ const m = drnetBoxRule.decodeMap({json.dumps(payload)});"
                f" return {json.dumps(thresholds)}.map(t => [...Array(m.count).keys()]"
                f".map(k => drnetBoxRule.boxRule(m, k, t, '{resolution}'))); }})()"
            )
            for ti in range(len(thresholds)):
                for k in range(count):
                    case = (input_size, resolution, thresholds[ti], k)
                    assert got[ti][k]["box"] == pytest.approx(expected[k, ti].tolist(), abs=1e-3), (
                        case
                    )
                    assert got[ti][k]["empty"] == bool(empty[k, ti]), case


# ----------------------------------------------------------------------------- issue 22: the API


def _raw_request(server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` bytes as they are; (status, headers, body) of the answer."""
    import http.client

    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(request)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, dict(answer.getheaders()), answer.read()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH"])
@pytest.mark.parametrize("path", ["/api/predict", "/api/models", "/"])
def test_unsupported_methods_answer_405_json(server, method, path):
    status, headers, body = _raw_request(
        server,
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi".encode(),
    )
    assert status == 405 and headers["Content-Type"] == "application/json"
    assert headers["Allow"] == ("POST" if path == "/api/predict" else "GET, HEAD")
    error = json.loads(body)["error"]
    assert f"{method} {path} is not supported" in error and "\n" not in error


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"BREW /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),
        (b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 505),
        (b"GET /api/models?verbose=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ],
)
def test_every_answer_is_json(server, request_bytes, status):
    """Even http.server's own errors (an unknown method, a bad version) are JSON, one line."""
    got, headers, body = _raw_request(server, request_bytes)
    assert got == status and headers["Content-Type"] == "application/json"
    assert "\n" not in json.loads(body)["error"]


def test_non_finite_numbers_travel_as_null(served, monkeypatch):
    """A NaN or infinity anywhere in an answer becomes null: JSON.parse reads every body."""
    monkeypatch.setattr(app, "predict", lambda *a, **k: {"score": float("nan"), "x": [math.inf]})
    server = start(served)
    try:
        request = urllib.request.Request(
            f"{server.url}api/predict?model=m1", _image_bytes(scene_image()),
            {"Content-Type": "image/png"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as answer:
            text = answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["results"] == [{"score": None, "x": [None]}]


def test_activations_only_when_asked(server, monkeypatch):
    """Activation maps are most of the bytes and of the compute: computed on request only."""
    calls = []
    real = api.level_activations
    monkeypatch.setattr(api, "level_activations", lambda *a: calls.append(1) or real(*a))
    status, body = post_image(server, _image_bytes(scene_image()), "?model=m1,m2")
    assert status == 200 and calls == []
    for result in body["results"]:
        assert result["activations"] is None and "activations" not in result["timings_ms"]
    status, body = post_image(server, _image_bytes(scene_image()), "?model=m2&activations=1")
    assert status == 200 and calls == [1] and len(body["results"][0]["activations"]) == 9


def _tuned_run(runs, tmp_path, layout: str, threshold: float) -> Path:
    """A copy of the classifier run whose localization metrics hold ``threshold``: in the run
    folder under the old name, or in a sibling localization/ folder as metrics.json (the demo's
    layout and the new name)."""
    folder = tmp_path / "models" / "drn_d_22" / "classification"
    shutil.copytree(runs["classifier"], folder)
    metrics = {"threshold": threshold, "threshold_mode": "minmax", "top1_loc_err": 0.4}
    if layout == "old":
        (folder / "localization_metrics.json").write_text(json.dumps(metrics))
    else:
        (folder.parent / "localization").mkdir()
        (folder.parent / "localization" / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.mark.parametrize("layout", ["old", "sibling"])
def test_first_box_uses_the_runs_tuned_threshold(runs, tmp_path, layout):
    """The run's chosen t (not the paper's 0.2) draws the first box; --threshold overrides it."""
    from drnet.tasks.boxes import boxes_from_class_map, scale_boxes
    from drnet.tasks.localize import LocalizationSettings, localize_image

    folder = _tuned_run(runs, tmp_path, layout, 0.65)
    model, card = load_model(folder)
    tuned = ServedModel.create(model, card, str(folder), id="m1", fast=False, dtype="float32")
    assert tuned.threshold == 0.65 and tuned.threshold_source.endswith(
        "localization_metrics.json" if layout == "old" else "localization/metrics.json"
    )
    assert tuned.describe()["threshold"] == 0.65
    image = Image.fromarray(scene_image())
    result = api.predict(tuned, image)
    assert result["threshold"] == 0.65
    from drnet.data.classification import full_image_transform

    x = full_image_transform(card.resize_size, card.mean, card.std)(image)[None]
    settings = LocalizationSettings(threshold_mode="minmax", fallback="peak", top_k=5)
    expected = localize_image(model, x, (90, 120), [0.65], settings)
    cell, _ = boxes_from_class_map(
        expected.class_map, expected.classes, [0.65], expected.input_size, resolution="cell"
    )
    cell = scale_boxes(cell, expected.input_size, (90, 120))
    assert result["top5"][0]["boxes"]["cell"] == pytest.approx(cell[0, 0].tolist(), abs=1e-3)
    assert api.predict(tuned, image, threshold=0.3)["threshold"] == 0.3
    forced = ServedModel.create(model, card, str(folder), id="m1", fast=False, threshold=0.4)
    assert (forced.threshold, forced.threshold_source) == (0.4, "--threshold")
    bare = ServedModel.create(model, card, str(folder / "checkpoint_best.pth"), id="m1", fast=False)
    assert bare.threshold == 0.65  # a checkpoint file: its folder's metrics
    plain, plain_card = load_model(runs["classifier"])
    default = ServedModel.create(plain, plain_card, str(runs["classifier"]), id="m1", fast=False)
    assert (default.threshold, default.threshold_source) == (0.2, "the paper's default")


def test_answers_say_what_the_model_knows(server):
    """Under each result: the classes, the size the model looked at, and notices for inputs far
    from its training images (a uniform black image, a photo many times the training size)."""
    status, body = post_image(server, _image_bytes(scene_image()), "?model=m1")
    info = body["results"][0]["model_info"]
    assert info["classes"] == CLASS_NAMES and info["num_classes"] == len(CLASS_NAMES)
    assert info["training_size"] == 64 and info["looked_at"] == [64, 85]
    assert info["notices"] == []
    status, body = post_image(server, _image_bytes(np.zeros((16, 16, 3), np.uint8)))
    for result in body["results"]:
        assert any("uniform" in n for n in result["model_info"]["notices"]), result["task"]
    big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    status, body = post_image(server, _image_bytes(big), "?model=m1")
    notices = body["results"][0]["model_info"]["notices"]
    assert any("640x480" in n and "85x64" in n for n in notices), notices


def test_cli_threshold_option(capsys):
    from helpers import run_cli

    with pytest.raises(SystemExit) as stopped:
        run_cli(capsys, "serve", "--weights", "x", "--threshold", "nan")
    assert stopped.value.code == 2 and "--threshold" in capsys.readouterr().err


# ----------------------------------------------------------------------------- issue 22: the page


@pytest.fixture(scope="module")
def compare_models(runs, tmp_path_factory) -> list[ServedModel]:
    """m1: the classifier with a tuned t = 0.65 (the demo's layout), m2: another classifier (other
    weights), m3 and m4: two segmenters with different weights."""
    root = tmp_path_factory.mktemp("compare-runs")
    tuned = _tuned_run(runs, root, "sibling", 0.65)
    torch.manual_seed(1)
    other = root / "cls2"
    save_tiny_model(other / "checkpoint_best.pth", len(CLASS_NAMES))
    shutil.copy(runs["classifier"] / "model.json", other / "model.json")
    seg2 = root / "seg2"
    save_tiny_model(seg2 / "checkpoint_best.pth", SEG_CLASSES, segmentation=True)
    shutil.copy(runs["segmenter"] / "model.json", seg2 / "model.json")
    served = []
    for number, folder in enumerate((tuned, other, runs["segmenter"], seg2), start=1):
        model, card = load_model(folder)
        served.append(
            ServedModel.create(
                model, card, str(folder), id=f"m{number}", fast=False, dtype="float32"
            )
        )
    return served


@pytest.fixture(scope="module")
def compare_server(compare_models):
    server = start(compare_models)
    yield server
    server.shutdown()
    server.server_close()


def set_viewport(browser: DevTools, width: int, height: int = 1000) -> None:
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        width=width, height=height, deviceScaleFactor=1, mobile=width < 600,
    )  # fmt: skip


@contextlib.contextmanager
def viewport(browser: DevTools, width: int, height: int = 1000) -> Iterator[None]:
    set_viewport(browser, width, height)
    try:
        yield
    finally:
        set_viewport(browser, 1200, 1000)


def _scene_file(tmp_path: Path, name: str = "scene.png") -> Path:
    path = tmp_path / name
    Image.fromarray(scene_image()).save(path)
    return path


@needs_chromium
def test_page_first_box_uses_the_runs_threshold(browser, compare_server, tmp_path):
    """The slider starts at the run's tuned t = 0.65 and the box drawn is the API's at 0.65."""
    status, body = post_image(compare_server, _image_bytes(scene_image()), "?model=m1")
    assert status == 200 and body["results"][0]["threshold"] == 0.65
    open_page(browser, compare_server.url)
    choose_models(browser, "m1")
    assert upload_and_wait(browser, _scene_file(tmp_path), 1) == "done"
    assert browser.js("document.querySelector('.classifier .threshold').value") == "0.65"
    assert "tuned" in browser.js("document.querySelector('.threshold-source').textContent")
    box = [
        float(v) for v in browser.js("document.querySelector('.box-text').dataset.box").split(",")
    ]
    assert box == pytest.approx(body["results"][0]["top5"][0]["boxes"]["pixel"], abs=0.06)
    assert "t = 0.65" in browser.js("document.querySelector('.box-text').textContent")
    shoot(browser, tmp_path, "serve-tuned-threshold.png")
    assert browser.errors() == []


@needs_chromium
def test_page_sees_json_errors_for_bad_parameters(browser, compare_server, tmp_path):
    """From the page: threshold=nan, an unknown parameter and PUT all answer JSON that
    JSON.parse reads (a 400, a 400 and a 405), each one line."""
    open_page(browser, compare_server.url)
    answers = browser.js(
        "(async () => { const body = await (await fetch('/examples/scene-sandal.png')).blob();"
        " const out = [];"
        " for (const [url, method] of [['/api/predict?threshold=nan', 'POST'],"
        "   ['/api/predict?treshold=0.5', 'POST'], ['/api/predict', 'PUT'],"
        "   ['/api/models', 'DELETE'], ['/api/predict', 'OPTIONS']]) {"
        "   const answer = await fetch(url,"
        "     { method, body: method === 'POST' ? body : undefined });"
        "   const text = await answer.text();"
        "   out.push([answer.status, JSON.parse(text).error]); }"
        " return out; })()"
    )
    assert [a[0] for a in answers] == [400, 400, 405, 405, 405]
    assert "threshold=nan" in answers[0][1] and "unknown parameter treshold" in answers[1][1]
    assert all("\n" not in a[1] for a in answers)
    browser.js(f"showError({json.dumps(answers[0][1])})")
    shoot(browser, tmp_path, "serve-bad-threshold.png")


@needs_chromium
def test_page_at_390px_has_no_horizontal_overflow(browser, compare_server, tmp_path):
    with viewport(browser, 390, 800):
        open_page(browser, compare_server.url)
        assert browser.js("document.documentElement.scrollWidth") <= 390
        choose_models(browser, "m1", "m2", "m3", "m4")
        assert upload_and_wait(browser, _scene_file(tmp_path), 1) == "done"
        browser.wait_for("document.querySelector('.disagreement') !== null")
        assert browser.js("document.documentElement.scrollWidth") <= 390
        lefts = browser.js(
            "[...document.querySelectorAll('.card')]"
            ".map(c => Math.round(c.getBoundingClientRect().left))"
        )
        assert len(lefts) == 4 and len(set(lefts)) == 1  # one card per row
        widest = browser.js(
            "Math.max(...[...document.querySelectorAll('body *')]"
            ".map(e => e.getBoundingClientRect().right))"
        )
        assert widest <= 390.5
        shoot(browser, tmp_path, "serve-390px.png")
    assert browser.errors() == []


@needs_chromium
def test_page_compares_three_models_in_one_row(browser, compare_server, tmp_path):
    """At 1280 px three models sit in one row with their pictures aligned; two segmenters get a
    disagreement view; activations are not computed until asked, then appear."""
    with viewport(browser, 1280, 1100):
        open_page(browser, compare_server.url)
        choose_models(browser, "m1", "m3", "m4")
        assert upload_and_wait(browser, _scene_file(tmp_path), 1) == "done"
        browser.wait_for("document.querySelector('.disagreement') !== null")
        tops = browser.js(
            "[...document.querySelectorAll('.card canvas.view')]"
            ".map(c => Math.round(c.getBoundingClientRect().top))"
        )
        assert len(tops) == 3 and len(set(tops)) == 1, tops  # one row, pictures aligned
        heights = browser.js(
            "[...document.querySelectorAll('.card canvas.view')]"
            ".map(c => Math.round(c.getBoundingClientRect().height))"
        )
        assert len(set(heights)) == 1
        view = browser.js(
            "(() => { const d = document.querySelector('.disagreement');"
            " return [d.dataset.kind, Number(d.dataset.share), d.textContent]; })()"
        )
        assert view[0] == "segmentation" and 0 < view[1] <= 100 and "disagree" in view[2]
        # activations: none until asked
        assert browser.js("document.querySelectorAll('.levels img').length") == 0
        assert browser.js("document.querySelectorAll('.compute-activations').length") == 3
        shoot(browser, tmp_path, "serve-compare.png")
        browser.js(
            "(() => { const d = document.querySelector('.card.segmenter details.activations');"
            " d.open = true; d.querySelector('.compute-activations').click(); })()"
        )
        browser.wait_for("document.querySelector('details.activations[data-loaded]') !== null")
        assert browser.js("document.querySelectorAll('.levels img').length") == 9
        assert browser.js("document.querySelectorAll('.colour-bar').length") == 1
        shoot(browser, tmp_path, "serve-activations.png")
    assert browser.errors() == []


@needs_chromium
def test_page_shares_controls_between_classifiers(browser, compare_server, tmp_path):
    """With "share controls" ticked one threshold and one class drive both classifier cards;
    the two classifiers get a disagreement view; hover, downloads, alt text, live status."""
    open_page(browser, compare_server.url)
    choose_models(browser, "m1", "m2")
    browser.js("document.querySelector('#share').checked = true")
    assert upload_and_wait(browser, _scene_file(tmp_path), 1) == "done"
    assert browser.js("document.querySelector('.disagreement').dataset.kind") == "classification"
    browser.js(
        "(() => { const s = document.querySelector('.card[data-model=m1] .threshold');"
        " s.value = '0.4'; s.dispatchEvent(new Event('input')); })()"
    )
    values = browser.js("[...document.querySelectorAll('.threshold')].map(s => s.value)")
    assert values == ["0.4", "0.4"]
    browser.js(
        "(() => { const s = document.querySelector('.card[data-model=m1] .class-select');"
        " s.value = '3'; s.dispatchEvent(new Event('change')); })()"
    )
    chosen = browser.js(
        "[...document.querySelectorAll('.class-select')].map(s => s.selectedOptions[0].text)"
    )
    assert chosen == [CLASS_NAMES[3]] * 2
    # hover read-out of the score under the cursor
    browser.js(
        "(() => { const c = document.querySelector('.card[data-model=m1] canvas.view');"
        " const r = c.getBoundingClientRect();"
        " c.dispatchEvent(new MouseEvent('mousemove', { clientX: r.left + r.width / 2,"
        " clientY: r.top + r.height / 2, bubbles: true })); })()"
    )
    readout = browser.js("document.querySelector('.card[data-model=m1] .readout').textContent")
    assert "cell" in readout and CLASS_NAMES[3] in readout and "strongest here" in readout
    # text alternatives, live status, what the model knows, downloads
    labels = browser.js(
        "[...document.querySelectorAll('canvas.view')].map(c => c.getAttribute('aria-label'))"
    )
    assert all(CLASS_NAMES[3] in label and "box" in label for label in labels)
    assert browser.js("document.querySelector('#status').getAttribute('aria-live')") == "polite"
    knows = browser.js("document.querySelector('.knows').textContent")
    assert f"Knows {len(CLASS_NAMES)} classes" in knows and "85×64" in knows
    browser.js("document.querySelector('.download-json').click()")
    assert browser.js("document.body.dataset.lastDownload") == "scene.drnet.json"
    shoot(browser, tmp_path, "serve-shared-controls.png")
    assert browser.errors() == []


@needs_chromium
def test_page_examples_paste_and_dark_theme(browser, compare_server, tmp_path):
    """An example image is one click; a pasted image is analysed; the page follows a dark
    colour scheme."""
    open_page(browser, compare_server.url)
    choose_models(browser, "m3")
    names = browser.js(
        "[...document.querySelectorAll('#examples .example')].map(b => b.dataset.name)"
    )
    assert names == ["scene-sandal.png", "scene-three-items.png", "scene-trouser.png"]
    browser.js(
        "document.querySelector('#examples .example[data-name=\"scene-three-items.png\"]').click()"
    )
    browser.wait_for("document.querySelectorAll('section.image').length === 1")
    browser.wait_for("document.querySelector('#status').dataset.state === 'done'")
    assert "scene-three-items.png" in browser.js(
        "document.querySelector('section.image h2').textContent"
    )
    browser.js(
        "(async () => { const blob = await (await fetch('/examples/scene-sandal.png')).blob();"
        " const data = new DataTransfer();"
        " data.items.add(new File([blob], 'image.png', { type: 'image/png' }));"
        " document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data })); })()"
    )
    browser.wait_for("document.querySelectorAll('section.image').length === 2")
    assert "pasted-1.png" in browser.js("document.querySelector('section.image h2').textContent")
    browser.wait_for("document.querySelector('#status').dataset.state === 'done'")
    browser.call(
        "Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}]
    )
    try:
        background = browser.js("getComputedStyle(document.body).backgroundColor")
        red, green, blue = (
            int(v) for v in background[background.index("(") + 1 : -1].split(",")[:3]
        )
        assert max(red, green, blue) < 60, background
        shoot(browser, tmp_path, "serve-dark.png")
    finally:
        browser.call("Emulation.setEmulatedMedia", features=[])
    assert browser.errors() == []


def test_warm_up_says_what_it_chooses(runs, monkeypatch):
    """`drnet serve` prints each step of choosing the fast path while it warms up (the lines
    reach the progress callback the CLI passes), before the first request is answered."""
    monkeypatch.setenv("DRNET_BACKEND", "torch")  # the candidates every install has
    model, card = load_model(runs["classifier"])
    lines: list[str] = []
    served = ServedModel.create(
        model, card, str(runs["classifier"]), id="m1", fast=True, dtype="float32",
        progress=lines.append,
    )  # fmt: skip
    assert lines == []  # nothing is chosen before the warm-up
    served.warm_up()
    assert lines, "the warm-up reported nothing"
    assert all(isinstance(line, str) and line for line in lines)
