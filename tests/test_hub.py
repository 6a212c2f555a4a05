"""Weights by name against an HTTP server on 127.0.0.1: torch hub's cache, the sha256 check,
nothing half-written kept, offline and unknown-tag errors.

The served file is a real torchvision-format resnet18 checkpoint made here; its table entry is
the real one with the file name (and so the sha256 prefix) of that file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.server
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import resnet_flax
from resnet_flax.io import hub, weights
from resnet_flax.io.convert import save_torchvision
from resnet_flax.io.download import download
from resnet_flax.io.weights import BASE_URL_ENV, weights_for
from resnet_flax.models.registry import init_variables


class _Files(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path.endswith("-0badbad0.pth"):  # a body shorter than its Content-Length
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        if self.path.endswith(".slow"):  # streamed in pieces, so two downloads overlap
            body = Path(self.directory, self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), len(body) // 8 + 1):
                self.wfile.write(body[start : start + len(body) // 8 + 1])
                self.wfile.flush()
                time.sleep(0.05)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Files, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Files.requests = []
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/models"
    httpd.shutdown()


@pytest.fixture
def published(server, tmp_path, monkeypatch):
    """A resnet18 checkpoint served as 'resnet18.tv_in1k', and the environment pointing at it."""
    folder, url = server
    (folder / "models").mkdir()
    variables = init_variables(resnet_flax.create_model("resnet18"), 32)
    local = tmp_path / "made.pth"
    save_torchvision(local, "resnet18", variables)
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    info = dataclasses.replace(weights_for("resnet18")[0], file=f"resnet18-{sha[:8]}.pth")
    (folder / "models" / info.file).write_bytes(local.read_bytes())
    _use(monkeypatch, info)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(BASE_URL_ENV, url)
    return info, variables, tmp_path / "torch" / "hub" / "checkpoints", folder / "models"


def _use(monkeypatch, info) -> None:
    """Make ``info`` the table's only entry for resnet18."""
    monkeypatch.setattr(weights, "WEIGHTS", (info,))
    monkeypatch.setattr(weights, "_BY_TAG", {info.tag: info})
    monkeypatch.setattr(hub, "WEIGHTS", (info,))


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_tag_downloads_once_into_torch_hubs_cache(published):
    info, variables, cache, _ = published
    model, loaded = resnet_flax.load_pretrained("resnet18.tv_in1k")
    assert model.num_classes == 1000
    _assert_same(loaded, variables)
    assert sorted(p.name for p in cache.iterdir()) == [info.file]  # no .part left
    assert len(_Files.requests) == 1
    model, again = resnet_flax.load_pretrained("resnet18", "IMAGENET1K_V1")
    _assert_same(again, variables)
    _, default = resnet_flax.load_pretrained("resnet18", "ResNet18_Weights.DEFAULT")
    _, default = resnet_flax.load_pretrained("resnet18")  # DEFAULT
    assert len(_Files.requests) == 1  # the cached file is reused, as torch reuses it
    assert isinstance(resnet_flax.create_model("resnet18"), resnet_flax.models.resnet.ResNet)
    with pytest.raises(ValueError, match=r"load_pretrained\('resnet18', 'IMAGENET1K_V1'\)"):
        resnet_flax.create_model("resnet18", weights="IMAGENET1K_V1")  # a module, always


def _serve_as(published, monkeypatch, file_name: str) -> None:
    """Serve the checkpoint under ``file_name`` and make it the table's resnet18.tv_in1k."""
    info, _, _, served = published
    (served / file_name).write_bytes((served / info.file).read_bytes())
    _use(monkeypatch, dataclasses.replace(info, file=file_name))


def test_a_file_whose_hash_differs_is_refused_and_not_kept(published, monkeypatch):
    _serve_as(published, monkeypatch, "resnet18-deadbeef.pth")
    message = r"sha256 is [0-9a-f]{16}\.\.\., but its file name says it starts with deadbeef"
    with pytest.raises(hub.WeightsError, match=message + ": refused, nothing kept"):
        resnet_flax.load_pretrained("resnet18.tv_in1k")
    assert list(published[2].iterdir()) == []


def test_bad_options_fail_before_anything_is_downloaded(published):
    info, _, cache, _ = published
    with pytest.raises(ValueError, match="num_classes must be a positive integer; got 10.5"):
        resnet_flax.load_pretrained(info.tag, num_classes=10.5)
    assert _Files.requests == [] and not cache.exists()


def test_two_downloads_of_one_file_at_once_both_end_with_the_right_file(server, tmp_path):
    """Each download streams into a temporary file of its own, checks it, then renames it into
    place: with one shared FILE.part, the second truncated the first, which renamed a corrupt
    file into the cache (its hash had passed while streaming)."""
    folder, url = server
    body = np.random.default_rng(0).bytes(1 << 20)
    (folder / "models").mkdir()
    (folder / "models" / "blob.slow").write_bytes(body)
    sha = hashlib.sha256(body).hexdigest()
    dest = tmp_path / "cache" / "blob.bin"
    errors: list[BaseException] = []

    def fetch():
        try:
            download(f"{url}/blob.slow", dest, algorithm="sha256", expected=sha, progress=False)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert dest.read_bytes() == body
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]  # no leftovers


def test_a_truncated_download_is_refused_and_not_kept(published, monkeypatch):
    _serve_as(published, monkeypatch, "resnet18-0badbad0.pth")
    with pytest.raises(hub.WeightsError, match=r"cannot download .*resnet18-0badbad0.pth"):
        resnet_flax.load_pretrained("resnet18.tv_in1k")
    assert list(published[2].iterdir()) == []


def test_offline_the_error_names_the_url_and_where_to_put_the_file(published, monkeypatch):
    info, _, cache, _ = published
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:9/models")  # nothing listens
    with pytest.raises(hub.WeightsError) as error:
        resnet_flax.load_pretrained("resnet18.tv_in1k")
    message = str(error.value)
    assert f"http://127.0.0.1:9/models/{info.file}" in message
    assert f"put the file at {cache / info.file}" in message
    (cache / info.file).write_bytes((published[3] / info.file).read_bytes())
    resnet_flax.load_pretrained("resnet18.tv_in1k")  # put there by hand: used, offline


def test_a_cache_that_cannot_be_written_names_torch_home(published, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a_file"))
    with pytest.raises(hub.WeightsError, match=r"cannot write to the weights cache .*TORCH_HOME"):
        resnet_flax.load_pretrained("resnet18.tv_in1k")


def test_tags_and_torchvision_enum_names():
    assert hub.resolve("resnet50.tv2_in1k").file == "resnet50-11ad3fa6.pth"
    assert hub.resolve("IMAGENET1K_V2", "resnet50").file == "resnet50-11ad3fa6.pth"
    assert hub.resolve("ResNet50_Weights.DEFAULT", "resnet50").tag == "resnet50.tv2_in1k"
    assert hub.resolve("DEFAULT", "vgg16").enum == "IMAGENET1K_V1"  # not the features-only
    assert "vgg16.tv_features" in resnet_flax.list_pretrained()
    # torchvision's architectures carry timm's weights too, by suffix or tag
    timms = hub.resolve("a1_in1k", "resnet50")
    assert (timms.source, timms.repository) == ("timm", "timm/resnet50.a1_in1k")
    assert (
        timms.url == "https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors"
    )
    assert hub.resolve("resnet50.a1_in1k").transforms().crop_size == 224
    assert hub.resolve("tv_in1k", "resnet50").file == "resnet50-0676ba61.pth"
    assert hub.resolve("tv_in1k", "resnet50").url == (
        "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    )
    assert (
        hub.resolve("DEFAULT", "resnetv2_50x1_bit").tag == "resnetv2_50x1_bit.goog_distilled_in1k"
    )
    with pytest.raises(hub.WeightsError, match=r"Valid: IMAGENET1K_V1, IMAGENET1K_V2, tv_in1k, "
                       r"tv2_in1k, a1_in1k, .*ram_in1k, DEFAULT"):  # fmt: skip
        hub.resolve("IMAGENET1K_V3", "resnet50")
    with pytest.raises(hub.WeightsError, match=r"Did you mean .*'resnet50.tv2_in1k'"):
        hub.resolve("resnet50.tv3_in1k")
    with pytest.raises(hub.WeightsError, match=r"unknown weights 'IMAGENET1K_V3' for resnet50"):
        hub.resolve("IMAGENET1K_V3", "resnet50")
    with pytest.raises(
        hub.WeightsError, match=r"neither torchvision nor timm publishes weights for 'resnet20'"
    ):
        resnet_flax.load_pretrained("resnet20")
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'"):
        resnet_flax.load_pretrained("resnet5", "DEFAULT")


def test_predict_takes_a_tag(published, tmp_path, capsys):
    from PIL import Image

    from resnet_flax.inference import predict

    image = tmp_path / "cat.png"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(image)
    assert predict.main(["--weights", "resnet18.tv_in1k", "--top", "2", str(image)]) == 0
    out = capsys.readouterr()
    assert "resnet18 (resnet18.tv_in1k)" in out.err and "  2. " in out.out
    assert predict.main(["--weights", "IMAGENET1K_V1", "--model", "resnet18", str(image)]) == 0
    assert predict.main(["--weights", "resnet18.tv9_in1k", str(image)]) == 2
    assert "unknown weights tag 'resnet18.tv9_in1k'" in capsys.readouterr().err


@contextlib.contextmanager
def _hugging_face(files: dict[str, bytes], tmp_path, monkeypatch, hugging_face_server):
    """A hub serving ``files`` (route -> bytes) on 127.0.0.1, huggingface_hub pointed at it
    with a cache of its own under ``tmp_path``."""
    with hugging_face_server(files) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
        yield


def test_a_timm_tag_comes_from_the_hugging_face_hub(tmp_path, monkeypatch, hugging_face_server):
    from resnet_flax.io.convert import export_torchvision
    from resnet_flax.io.pth import write_safetensors

    variables = init_variables(resnet_flax.create_model("resnet18d"), 32)
    write_safetensors(tmp_path / "model.safetensors", export_torchvision("resnet18d", variables))
    route = "/timm/resnet18d.ra2_in1k/resolve/main/model.safetensors"
    plain = init_variables(resnet_flax.create_model("resnet18"), 32, seed=1)
    write_safetensors(tmp_path / "plain.safetensors", export_torchvision("resnet18", plain))
    files = {
        route: (tmp_path / "model.safetensors").read_bytes(),
        # timm's weights for torchvision's architecture
        "/timm/resnet18.a1_in1k/resolve/main/model.safetensors": (
            tmp_path / "plain.safetensors"
        ).read_bytes(),
    }
    with _hugging_face(files, tmp_path, monkeypatch, hugging_face_server):
        model, loaded = resnet_flax.load_pretrained("resnet18d.ra2_in1k")
        _assert_same(loaded, variables)
        _, again = resnet_flax.load_pretrained("resnet18d")  # DEFAULT: timm's first
        _assert_same(again, variables)
        assert list((tmp_path / "hf").rglob("model.safetensors"))  # in huggingface_hub's cache
        _, timms = resnet_flax.load_pretrained("resnet18", "a1_in1k")
        _assert_same(timms, plain)
        transform = hub.resolve("resnet18d.ra2_in1k").transforms()
        assert (transform.resize_size, transform.crop_size) == (256, 224)  # 224 / 0.875
        assert transform.interpolation == "bicubic"
        with pytest.raises(hub.WeightsError, match=r"cannot fetch timm/resnet50d.a1_in1k/model"):
            resnet_flax.load_pretrained("resnet50d.a1_in1k")  # not on this server, nor cached
    with pytest.raises(hub.WeightsError, match=r"unknown weights 'a9_in1k' for resnet50d.*a1_in1k"):
        resnet_flax.load_pretrained("resnet50d", "a9_in1k")


def test_a_transformers_repository_id_comes_from_the_hugging_face_hub(
    tmp_path, monkeypatch, hugging_face_server
):
    """``load_pretrained("microsoft/resnet-18")``: config.json and model.safetensors through
    huggingface_hub, as a save_pretrained folder would give them (tests/test_transformers.py
    checks those folders against transformers itself)."""
    from resnet_flax.io import transformers_resnet

    variables = init_variables(resnet_flax.create_model("resnet18", num_classes=3), 32)
    folder = transformers_resnet.save_transformers(
        tmp_path / "repo", "resnet18", variables, labels=["cat", "dog", "fish"]
    )
    repo = "/microsoft/resnet-18/resolve/main/"
    files = {
        repo + name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")
    }
    with _hugging_face(files, tmp_path, monkeypatch, hugging_face_server):
        model, loaded = resnet_flax.load_pretrained("microsoft/resnet-18")
        assert model.num_classes == 3
        _assert_same(loaded, variables)
        assert transformers_resnet.read_labels("microsoft/resnet-18") == ["cat", "dog", "fish"]
        with pytest.raises(hub.WeightsError, match=r"cannot fetch microsoft/resnet-50/config"):
            resnet_flax.load_pretrained("microsoft/resnet-50")  # not on this server


def test_a_damaged_cached_file_is_downloaded_again(published):
    """A file cut short in the cache (put there by hand, a full disk): refreshed, once."""
    info, variables, cache, served = published
    cache.mkdir(parents=True)
    (cache / info.file).write_bytes((served / info.file).read_bytes()[:5000])
    with pytest.warns(UserWarning, match=rf"{info.file}.*: downloading {info.tag} again"):
        _, loaded = resnet_flax.load_pretrained(info.tag)
    _assert_same(loaded, variables)
    assert (cache / info.file).read_bytes() == (served / info.file).read_bytes()


def test_a_mirror_address_that_is_no_url_names_the_variable(published, monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, "notaurl")
    with pytest.raises(hub.WeightsError, match=rf"{BASE_URL_ENV}='notaurl' is not a URL"):
        resnet_flax.load_pretrained("resnet18.tv_in1k")
