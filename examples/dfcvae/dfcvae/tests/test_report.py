"""The experiments of the report on tiny random models and a handful of images."""
import json

import numpy as np
import pytest
import torch

from dfcvae import latent, metrics, pretrained, recentre, report, vae

from .helpers import make_celeba


def test_svm_accuracy_on_a_separable_case():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0.3, np.ones(200, dtype=bool)], axis=1)
    acc = metrics.svm_attribute_accuracy(x[:150], y[:150], x[150:], y[150:], n_jobs=1)  # no worker processes
    assert acc.shape == (3,) and acc[0] > 0.95 and acc[1] > 0.95 and acc[2] == 1.0
    assert np.allclose(metrics.majority_accuracy(y[:150], y[150:])[2], 1.0)


def test_grid_assignment_is_a_permutation_that_keeps_neighbours():
    rng = np.random.default_rng(0)
    side = 6
    pts = rng.normal(size=(side * side, 2))
    cells = metrics.grid_assignment(pts, side)
    assert sorted(cells.tolist()) == list(range(side * side))
    left = pts[:, 0].argmin()
    assert cells[left] % side == 0  # the leftmost point lands in the leftmost column
    with pytest.raises(ValueError, match="exactly"):
        metrics.grid_assignment(pts[:-1], side)


def test_quality_metrics():
    x = torch.rand(4, 3, 32, 32)
    assert metrics.mse(x, x) == 0 and abs(metrics.ssim(x, x) - 1) < 1e-6
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert metrics.ssim(blurred, x) < 0.99
    assert (metrics.laplacian_variance(blurred) < metrics.laplacian_variance(x)).all()
    a = np.random.default_rng(0).normal(size=(300, 4))
    assert abs(metrics.frechet_distance(a, a)) < 1e-6
    assert metrics.frechet_distance(a, a + 3) == pytest.approx(36, rel=1e-3)


def test_attribute_vector():
    codes = torch.cat([torch.ones(5, 3), torch.zeros(5, 3)])
    has = torch.tensor([True] * 5 + [False] * 5)
    assert torch.equal(latent.attribute_vector(codes, has), torch.ones(3))
    with pytest.raises(ValueError, match="with and without"):
        latent.attribute_vector(codes, torch.ones(10, dtype=torch.bool))


@pytest.mark.slow
def test_full_report_on_tiny_models(tmp_path, caffe_weights):
    data = make_celeba(tmp_path / "celeba", n_images=50, listed=50, splits=[0] * 30 + [2] * 20)
    ckpts = {}
    for i, key in enumerate(("pvae", "vae123")):
        torch.manual_seed(i)
        path = tmp_path / key / "checkpoint.pt"
        path.parent.mkdir()
        torch.save({"model": vae.VAE().state_dict(), "step": 3,
                    "config": {"preset": key, "latent": 100, "crop": "released", "images": 30, "epochs": 1,
                               "steps_per_epoch": 3, "batch_size": 8, "balance": "released", "amp": "off",
                               "device": "cpu"}}, path)
        ckpts[key] = path
    torch.manual_seed(2)  # a baseline: the same preset at another budget, exported and re-centred
    early = tmp_path / "early.pt"
    raw = vae.VAE()
    torch.save({"model": recentre.recentred(raw, torch.randn(100)).state_dict(), "step": 2,
                "config": {**torch.load(ckpts["vae123"], weights_only=True)["config"],
                           "recentred": {"offset_norm": 1.0, "offset": torch.randn(100).tolist(), "images": 30}}},
               early)
    pretrained.export(early, "vae123", tmp_path / "baseline")
    out = tmp_path / "report"
    rc = report.main(["--pvae", str(ckpts["pvae"]), "--vae123", str(ckpts["vae123"]), "--data", str(data),
                      "--out", str(out), "--svm-train", "0", "--tsne-side", "4", "--quality-images", "10",
                      "--attribute-images", "10", "--no-progress", "--baseline", str(tmp_path / "baseline")])
    assert rc == 0
    text = (out / "report.md").read_text()
    for png in ("samples_paper.png", "samples_released.png", "reconstructions.png", "interpolation.png",
                "manipulation.png", "attribute_correlation.png", "tsne_grid.jpg"):
        assert (out / png).is_file() and f"]({png})" in text, png
    assert "| Eyeglasses |" in text and "**average**" in text and f"ours {report.VGG_LABEL}" in text
    assert "not comparable" in text and "Δ maj." in text
    assert "FD VGG19" in text and "FD ONet" in text and "| PVAE | samples (released) |" in text
    assert "| data | other test images |" in text and "## What matches the paper" in text
    assert "### How many prior samples are faces (Figure 3)" in text and "| VAE-123 |" in text.split("are faces")[1]
    assert "| VAE-123 (2 steps) |" in text.split("(Table 1)")[1] and "ours VAE-123 (2 steps)" in text
    faces_table = text.split("are faces")[1].split("## What")[0]
    assert "re-centred" in faces_table and "| VAE-123 (2 steps) |" in faces_table and "—" not in faces_table
    assert "- Table 1 at 3 steps: " in text and "- Table 1 at 2 steps: " in text
    assert "- VAE-123, 2 → 3 steps: Table 1 average" in text
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"PVAE", "VAE-123", "VAE-123 (2 steps)", "majority"}
    assert set(summary["VAE-123 (2 steps)"]["face_rates"]["paper"]) == {"raw", "recentred"}
    assert set(summary["VAE-123"]["quality"]) == {"reconstruction", "samples (paper)", "samples (released)"}
    assert 0 <= summary["VAE-123"]["quality"]["samples (paper)"]["face_rate"] <= 1
    from PIL import Image

    assert Image.open(out / "tsne_grid.jpg").size == (64, 64)  # 4x4 faces of 16 px
    with pytest.raises(SystemExit):
        report.main(["--out", str(out)])  # no model given


def test_report_is_written_section_by_section(tmp_path, monkeypatch):
    """An interrupted report leaves a valid report.md with the sections done so far."""
    data = make_celeba(tmp_path / "celeba", n_images=30, listed=30, splits=[0] * 16 + [2] * 14)
    path = tmp_path / "m" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save({"model": vae.VAE().state_dict(), "step": 1, "config": {"preset": "vae123", "steps_per_epoch": 1}}, path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "section_table1", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.main(["--vae123", str(path), "--data", str(data), "--out", str(tmp_path / "r"), "--tsne-side", "2",
                     "--attribute-images", "5", "--no-progress"])
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## Samples from the prior" in text and "## Reconstructions" in text and "(Figure 7)" in text
    assert "Table 1" not in text
