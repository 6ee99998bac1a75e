"""Pretrained weights by name through the real ``huggingface_hub`` client, against a local
endpoint: a small HTTP server on 127.0.0.1 answers the Hub's ``resolve`` routes with the
headers the client reads, ``HF_ENDPOINT`` points at it and ``HF_HOME`` is a temporary folder.
Nothing here reaches the network."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

pytest.importorskip("huggingface_hub")

from efficientvit_jax.cli import main

TAG = "efficientvit_b0.r224_in1k"
REPO, FILE = f"timm/{TAG}", "model.safetensors"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PROB_ATOL = 1e-4  # as tests/data/test_predict_eval.py


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        self.server.seen.append((self.command, self.path))  # type: ignore[attr-defined]
        m = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
        data = self.server.files.get((m[1], m[3])) if m else None  # type: ignore[attr-defined]
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self.send_response(200)  # the file itself: no redirect to a CDN
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", etag)
        self.send_header("X-Linked-Etag", etag)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _hub(files: dict[tuple[str, str], bytes]) -> Any:
    """A local endpoint serving ``{(repo, filename): bytes}``; yields ``(url, seen)``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.seen = files, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture()
def hub_env(monkeypatch: Any) -> Any:
    """``use(endpoint, home, offline=False)``: the environment a user sets, read again by
    ``huggingface_hub.constants`` (it reads it once, at import); restored afterwards."""
    import huggingface_hub.constants as constants

    def use(endpoint: str, home: Any, offline: bool = False) -> dict[str, str]:
        env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1" * offline}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        importlib.reload(constants)
        return env

    yield use
    monkeypatch.undo()
    importlib.reload(constants)


def _timm_probabilities(timm: Any, weights: str, path: str) -> np.ndarray:
    import timm.data
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    model = timm.create_model("efficientvit_b0", pretrained=False).eval()
    model.load_state_dict(load_file(weights))
    t = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        return model(t(Image.open(path).convert("RGB"))[None]).double().softmax(-1).numpy()[0]


def _predict(capsys: Any, img: str) -> list[dict[str, Any]]:
    assert main(["predict", img, "--model", TAG, "--json"]) == 0
    return json.loads(capsys.readouterr().out)[0]["top"]


def _one_line_error(argv: list[str], capsys: Any) -> str:
    t0 = time.perf_counter()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    assert time.perf_counter() - t0 < 30
    return err


def test_predict_by_tag_downloads_then_reads_the_cache(
    timm: Any, timm_b0: str, image_files: dict, hub_env: Any, tmp_path: Any, capsys: Any
) -> None:
    img = image_files["photo_jpeg"]
    want = _timm_probabilities(timm, timm_b0, img)
    with open(timm_b0, "rb") as f:
        files = {(REPO, FILE): f.read()}
    with _hub(files) as (url, seen):
        hub_env(url, tmp_path / "hf")
        got = _predict(capsys, img)
        # The look-up at ``main``, the download at the commit it answered (the client may
        # also call the endpoint's /api routes of its own accord: not ours to check).
        resolved = {(m, p) for m, p in seen if "/resolve/" in p}
        assert {m for m, p in resolved} == {"HEAD", "GET"}
        assert {p for m, p in resolved} <= {f"/{REPO}/resolve/{r}/{FILE}" for r in ("main", COMMIT)}
        n = len(seen)
        assert _predict(capsys, img) == got  # offline-first: the cache, no call at all
        assert len(seen) == n
    idx = [t["index"] for t in got]
    assert idx == list(np.argsort(-want)[:5])
    np.testing.assert_allclose([t["probability"] for t in got], want[idx], atol=PROB_ATOL)

    assert _predict(capsys, img) == got  # the server stopped: the cache
    hub_env(url, tmp_path / "hf", offline=True)
    assert _predict(capsys, img) == got

    hub_env(url, tmp_path / "empty")  # nothing cached, nothing listening
    err = _one_line_error(["predict", img, "--model", TAG], capsys)
    assert err.startswith(f"efficientvit-jax predict: error: {TAG}: cannot download {REPO} {FILE}")
    assert err.endswith(
        "without network, give --weights FILE (convert: --input FILE): "
        "the checkpoint, downloaded elsewhere"
    )
    assert not os.path.exists(tmp_path / "empty" / "hub" / f"models--timm--{TAG}" / "snapshots")


def test_python_api_equals_the_file(timm_b0: str, hub_env: Any, tmp_path: Any) -> None:
    import jax

    import efficientvit_jax
    from efficientvit_jax import inference

    with open(timm_b0, "rb") as f:
        files = {(REPO, FILE): f.read()}
    with _hub(files) as (url, _):
        hub_env(url, tmp_path / "hf")
        got = efficientvit_jax.load_pretrained(TAG)
    want = efficientvit_jax.load_timm_weights(timm_b0, TAG)
    assert jax.tree.all(jax.tree.map(np.array_equal, got, want))
    model, variables = efficientvit_jax.create_model("efficientvit_b0", pretrained=True)
    assert model.config == efficientvit_jax.create_model(TAG).config
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, want))
    _, variables = inference.load_pretrained(TAG)  # no file: the same weights
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, want))


def test_refusals_are_one_line(hub_env: Any, tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    from efficientvit_jax.data import tags

    img = str(tmp_path / "x.png")
    argv = ["predict", img, "--model", TAG]
    open(img, "wb").close()
    with _hub({(REPO, FILE): b"not a checkpoint"}) as (url, _):
        hub_env(url, tmp_path / "bad")
        err = _one_line_error(argv, capsys)
        assert f"{TAG}: {REPO} {FILE} (cached at " in err
        assert err.endswith("not a safetensors checkpoint (Error while deserializing header: "
                            "header too large)")  # fmt: skip
    with _hub({}) as (url, _):
        hub_env(url, tmp_path / "none")
        err = _one_line_error(argv, capsys)
        assert err.endswith(
            f"{TAG}: {url} has no {REPO} {FILE} (HTTP 404); "
            "give --weights FILE (convert: --input FILE)"
        )
    hub_env("http://127.0.0.1:9", tmp_path / "off", offline=True)
    err = _one_line_error(argv, capsys)
    assert f"{TAG}: weights {REPO} {FILE} are not in the cache (" in err
    assert "HF_HUB_OFFLINE is set; without network, give --weights FILE" in err

    m1 = tags.TAGS["efficientvit_m1.r224_in1k"]
    monkeypatch.setitem(tags.TAGS, m1.name, tags.dataclasses.replace(m1, hf_hub_id=None))
    monkeypatch.setattr(tags, "_ALL", tuple(tags.TAGS.values()))
    err = _one_line_error(["predict", img, "--model", m1.name], capsys)
    assert f"error: {m1.name}: no published weights; tags with weights: {TAG}, " in err
    assert m1.name + "," not in err

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    err = _one_line_error(argv, capsys)
    assert err.endswith("pip install 'efficientvit-jax[zoo]'")


def test_a_fresh_process_reads_the_environment(tmp_path: Any, image_files: dict) -> None:
    """The console program as a user runs it: ``HF_ENDPOINT`` and ``HF_HOME`` from the
    environment, nothing cached and nothing listening -> one line, exit 2, in 30 s."""
    with _hub({}) as (url, _):
        pass  # a port that was just closed
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    argv = [sys.executable, "-m", "efficientvit_jax.cli", "convert", "--model", TAG, "--output"]
    t0 = time.perf_counter()
    r = subprocess.run([*argv, str(tmp_path / "out")], env=env, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert time.perf_counter() - t0 < 30
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and f"from {url} (" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "out")


SEG, SEG_MIT = "efficientvit_seg_b0_cityscapes", "efficientvit-seg-b0-cityscapes"
SEG_REPO, SEG_FILE = "han-cai/efficientvit-seg", "efficientvit_seg_b0_cityscapes.pt"


def _mit_seg_checkpoint(path: Any) -> str:
    """A file as MIT publishes it (``{"state_dict": ...}``, torch zip), made by MIT's own code."""
    import torch

    spec = importlib.util.spec_from_file_location(
        "evit_mit_reference", os.path.join(os.path.dirname(__file__), "_mit_reference.py")
    )
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch.manual_seed(0)
    model = ref.load_create_seg_model()("b0", "cityscapes", pretrained=False)
    torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


def test_mit_segmentation_checkpoints_by_name(
    image_files: dict, hub_env: Any, tmp_path: Any, capsys: Any
) -> None:
    """MIT's seg checkpoints come from ``han-cai/efficientvit-seg`` by name, in Python and in
    ``segment`` without ``--weights``, equal to the same file given by hand; then from the
    cache with nothing listening; an empty cache is one line."""
    import jax

    import efficientvit_jax

    pt = _mit_seg_checkpoint(tmp_path / "b0.pt")
    want = efficientvit_jax.load_mit_weights(pt, SEG)
    assert efficientvit_jax.zoo.pretrained_file(SEG_MIT) == (SEG_REPO, SEG_FILE)
    img = image_files["photo_jpeg"]
    by_hand = tmp_path / "by_hand"
    assert main(["segment", img, "--model", SEG, "--weights", pt, "-o", str(by_hand)]) == 0
    with open(pt, "rb") as f:
        files = {(SEG_REPO, SEG_FILE): f.read()}
    with _hub(files) as (url, _):
        hub_env(url, tmp_path / "hf")
        got = efficientvit_jax.load_pretrained(SEG_MIT)
    assert jax.tree.all(jax.tree.map(np.array_equal, got, want))
    model, variables = efficientvit_jax.create_model(SEG, pretrained=True)  # the cache now
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, want))
    assert model.config == efficientvit_jax.create_model(SEG).config
    by_name = tmp_path / "by_name"
    assert main(["segment", img, "--model", SEG_MIT, "-o", str(by_name)]) == 0
    stem = os.path.splitext(os.path.basename(img))[0]
    for out in (by_hand, by_name):
        assert os.path.isfile(out / f"{stem}.png")
    from PIL import Image

    a, b = (np.asarray(Image.open(o / f"{stem}.png")) for o in (by_hand, by_name))
    np.testing.assert_array_equal(a, b)

    capsys.readouterr()
    hub_env(url, tmp_path / "empty")
    err = _one_line_error(["segment", img, "--model", SEG, "-o", str(tmp_path / "x")], capsys)
    assert f"{SEG}: cannot download {SEG_REPO} {SEG_FILE} from {url} (" in err
    assert not os.path.exists(tmp_path / "x")
