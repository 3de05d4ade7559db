"""CelebA loader, crops and the decoded face cache."""
from pathlib import Path

import numpy as np
import pytest
import torch

from dfcvae import celeba

from .helpers import SHARED_CELEBA, make_celeba


def test_index_counts_missing_and_splits(tmp_path, capsys):
    root = make_celeba(tmp_path / "c", n_images=10, listed=14, splits=[0] * 6 + [1] * 4 + [2] * 4)
    data = celeba.load_celeba(root)
    assert len(data) == 10 and data.listed == 14
    assert "found 10 of the 14 listed" in capsys.readouterr().err
    assert len(data.split("train")) == 6 and len(data.split("val")) == 4 and len(data.split("test")) == 0
    assert data.attributes.dtype == torch.bool and data.attributes.shape == (10, 40)
    assert data.attribute("Smiling").shape == (10,)
    with pytest.raises(KeyError, match="Smiling"):
        data.attribute("Smilling")
    assert data.identity is not None and data.identity[0] == 1


def test_missing_folder_and_files_are_explained(tmp_path):
    with pytest.raises(celeba.CelebAError, match="--data"):
        celeba.load_celeba(tmp_path / "nope")
    root = make_celeba(tmp_path / "c")
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(celeba.CelebAError, match="list_eval_partition.txt is missing"):
        celeba.load_celeba(root)
    empty = tmp_path / "e"
    make_celeba(empty, n_images=0)
    with pytest.raises(celeba.CelebAError, match="no .jpg"):
        celeba.load_celeba(empty)


def test_crops_are_relative_to_image_size():
    assert celeba.crop_box((178, 218), "released") == (30, 40, 168, 178)
    assert celeba.crop_box((89, 109), "released") == (15, 20, 84, 89)
    assert celeba.crop_box((178, 218), "center108") == (35, 55, 143, 163)
    with pytest.raises(ValueError, match="released"):
        celeba.crop_box((178, 218), "centre")


def test_cache_skips_corrupt_images_and_is_reused(tmp_path, monkeypatch):
    root = make_celeba(tmp_path / "c", n_images=10, listed=12, corrupt=(3,))
    data = celeba.load_celeba(root, verbose=False)
    cache = celeba.build_cache(data, "released", 64, tmp_path / "cache", workers=1, progress=False)
    assert cache.images.shape == (9, 64, 64, 3) and cache.images.dtype == np.uint8
    assert cache.bad == ["000004.jpg"] and 3 not in cache.rows.tolist() and len(cache.rows) == 9
    direct = celeba.decode_face(str(root / "img_align_celeba" / "000001.jpg"), "released", 64)
    assert np.array_equal(cache.images[0], direct)
    monkeypatch.setattr(celeba, "_decode_many", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = celeba.build_cache(data, "released", 64, tmp_path / "cache", workers=1, progress=False)
    assert again.path == cache.path and np.array_equal(np.asarray(again.images), np.asarray(cache.images))
    # a different image list or crop gets a different key
    assert celeba.cache_key(data.files[:4], "released", 64) != celeba.cache_key(data.files, "released", 64)
    assert celeba.cache_key(data.files, "center108", 64) != celeba.cache_key(data.files, "released", 64)
    assert not list((tmp_path / "cache").glob("*.tmp"))
    x = celeba.to_float(torch.from_numpy(np.array(cache.images[:2])))
    assert x.shape == (2, 3, 64, 64) and 0 <= x.min() and x.max() <= 1


@pytest.mark.slow
@pytest.mark.skipif(not Path(SHARED_CELEBA).is_dir(), reason="../shared/data/celeba is not there")
def test_shared_subset(tmp_path):
    data = celeba.load_celeba(SHARED_CELEBA, verbose=False)
    assert len(data) == 34640 and data.listed == 202599
    assert (len(data.split("train")), len(data.split("val")), len(data.split("test"))) == (30000, 1000, 3640)
    sub = data.split("test").select(range(32))
    cache = celeba.build_cache(sub, "released", 64, tmp_path, workers=2, progress=False)
    assert cache.images.shape == (32, 64, 64, 3) and not cache.bad
    assert 40 < cache.images.mean() < 215  # real faces, not blank
