import hashlib
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from tokencodec.data import DatasetError, ImageReadError, ImageSkippedWarning, load_dataset, read_errors, read_image
from tokencodec.data import kodak as kodak_module
from tokencodec.data.kodak import expected_sums, kodak_folder, load_kodak


def test_embedded_default_needs_no_download():
    items = load_dataset("embedded")
    assert [i.name for i in items] == ["astronaut", "chelsea", "coffee", "rocket"]
    assert all(i.image.dtype == np.uint8 and i.image.shape[2] == 3 for i in items)


def test_kodak_from_a_folder_is_verified(kodak_dir):
    items = load_kodak(limit=2, folder=kodak_dir)
    assert [i.name for i in items] == ["kodim01.png", "kodim02.png"] and items[0].image.shape == (512, 768, 3)
    assert len(expected_sums()) == 24


def test_kodak_env_variable(kodak_dir, monkeypatch):
    monkeypatch.setenv("TOKENCODEC_KODAK", str(kodak_dir))
    assert load_dataset("kodak", limit=1)[0].name == "kodim01.png"


def test_a_tampered_kodak_file_is_refused(kodak_dir, tmp_path):
    for p in kodak_dir.glob("*.png"):
        shutil.copy(p, tmp_path / p.name)
    data = bytearray((tmp_path / "kodim07.png").read_bytes())
    data[-20] ^= 0xFF
    (tmp_path / "kodim07.png").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="kodim07.png: SHA-256 .* does not match"):
        kodak_folder(tmp_path)


def test_an_incomplete_kodak_folder_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="lacks 24 of 24"):
        kodak_folder(tmp_path)


def test_download_fills_the_cache_and_verifies(kodak_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("TOKENCODEC_KODAK", raising=False)
    monkeypatch.setenv("TOKENCODEC_CACHE", str(tmp_path))
    fetched = []

    def fake_urlopen(url, timeout):  # stands in for the network: serves the reference files
        name = url.rsplit("/", 1)[1]
        fetched.append(name)
        return io.BytesIO((kodak_dir / name).read_bytes())

    monkeypatch.setattr(kodak_module.urllib.request, "urlopen", fake_urlopen)
    folder = kodak_folder()
    assert folder == tmp_path / "kodak" and len(fetched) == 24
    kodak_folder()  # cached: nothing fetched again
    assert len(fetched) == 24


def test_a_download_with_wrong_bytes_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TOKENCODEC_KODAK", raising=False)
    monkeypatch.setenv("TOKENCODEC_CACHE", str(tmp_path))
    monkeypatch.setattr(kodak_module.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"evil"))
    with pytest.raises(DatasetError, match="do not match the Kodak SHA-256"):
        kodak_folder()
    assert not any((tmp_path / "kodak").glob("*.png")) if (tmp_path / "kodak").exists() else True
    assert hashlib.sha256(b"evil").hexdigest() not in str(expected_sums())


def test_folder_loader_and_corrupt_images(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.png")
    assert [i.name for i in load_dataset(str(tmp_path))] == ["a.png"]
    png = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(png[: len(png) // 2])  # truncated
    with read_errors("stop"), pytest.raises(ImageReadError, match="b.png: not a readable image"):
        load_dataset(str(tmp_path))
    with read_errors("skip") as skipped, pytest.warns(ImageSkippedWarning, match=r"skipped \(unreadable\): .*b.png"):
        assert [i.name for i in load_dataset(str(tmp_path))] == ["a.png"]      # the rest of the folder is kept
    assert list(skipped) == ["b.png"] and skipped["b.png"].startswith("unreadable: ")
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")


def test_unknown_dataset_names_the_choices(tmp_path):
    with pytest.raises(DatasetError, match="use one of embedded, kodak, calibration or a folder"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset(str(tmp_path))
    with pytest.raises(DatasetError, match="no-such-folder: folder not found"):
        load_dataset(str(tmp_path / "no-such-folder"))
    with pytest.raises(DatasetError, match=r"limit=0: allowed an integer >= 1"):
        load_dataset("embedded", 0)


def test_the_calibration_set_is_disjoint_from_the_embedded_photos():
    names = {i.name for i in load_dataset("calibration")}
    assert len(names) == 5 and not names & {i.name for i in load_dataset("embedded")}
