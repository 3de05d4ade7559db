"""Shipped models (export, checksum-verified loading), the two prior-sampling conventions, and the demo gallery."""
import csv
import json
import re

import pytest
import torch

from dfcvae import celeba, gallery, latent, pretrained, vae
from perceptloss.weights import sha256_file

from .helpers import make_celeba


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def _randomised_bn(model):
    """Give every BatchNorm non-trivial running statistics, so eval and batch-statistics decoding differ."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def test_batch_statistics_sampling_keeps_the_saved_running_statistics():
    torch.manual_seed(0)
    model = _randomised_bn(vae.VAE())
    before = _bn_buffers(model)
    z = torch.randn(200, 100)
    released = latent.sample(model, z, latent.SAMPLINGS["released"])
    assert released.shape == (200, 3, 64, 64) and 0 <= released.min() and released.max() <= 1
    after = _bn_buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and not model.decoder.training
    # each batch of 100 codes is normalised by its own statistics: the same as a train-mode copy on that batch
    ref = vae.VAE()
    ref.load_state_dict(model.state_dict())
    ref.decoder.train()
    with torch.no_grad():
        expected = ref.decoder(z[:100] * 0.4).clamp(0, 1)
    torch.testing.assert_close(released[:100], expected)
    paper = latent.sample(model, z, latent.SAMPLINGS["paper"])
    torch.testing.assert_close(paper, latent.decode(model, z))  # eval-mode BN, temperature 1
    assert (paper - latent.decode(model, z * 0.4)).abs().max() > 1e-3


def _tiny_run(folder, preset="vae123", step=7):
    torch.manual_seed(1)
    model = _randomised_bn(vae.VAE())
    folder.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "step": step,
                "config": {"preset": preset, "latent": 100, "crop": "released", "images": 64, "batch_size": 8,
                           "world_size": 1, "steps_per_epoch": 8, "epochs": 1, "balance": "released", "amp": "bf16"}},
               folder / "checkpoint.pt")
    with open(folder / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "lr", "loss", "kl", "rec", "images_per_s", "elapsed_s"])
        w.writerows([[1, 0, 1e-3, 5, 2, 3, 10, 4.0], [2, 0, 1e-3, 4, 2, 2, 10, 6.0],  # killed at 6 s,
                     [3, 0, 1e-3, 3, 1, 2, 10, 3.0], [7, 0, 1e-3, 2, 1, 1, 10, 5.0]])  # resumed: 5 s more
    return model, folder / "checkpoint.pt"


def test_export_and_load_pretrained_round_trip(tmp_path):
    model, ckpt = _tiny_run(tmp_path / "run")
    folder = tmp_path / "pretrained"
    weights = pretrained.export(ckpt, "vae123", folder)
    card = pretrained.read_card("vae123", folder)
    assert card["steps"] == 7 and card["epochs"] == pytest.approx(7 / 8) and card["preset"] == "vae123"
    assert card["wall_time_s"] == pytest.approx(11.0) and card["sha256"] == sha256_file(weights)
    assert card["final_kl"] == pytest.approx(1.5) and card["images"] == 64
    loaded = pretrained.load_pretrained("vae123", folder)
    assert isinstance(loaded, vae.VAE) and not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for k, v in model.state_dict().items():
        expected = v.half().float() if v.is_floating_point() else v
        assert torch.equal(loaded.state_dict()[k], expected), k
    x = torch.rand(2, 3, 64, 64)
    mean, logvar = loaded.encoder(x)
    assert mean.shape == logvar.shape == (2, 100) and loaded.decoder(mean).shape == (2, 3, 64, 64)
    # report figures written into the card survive a re-export of the same weights
    pretrained.update_card("vae123", folder, table1_average=88.1)
    pretrained.export(ckpt, "vae123", folder, overwrite=True)
    assert pretrained.read_card("vae123", folder)["table1_average"] == 88.1
    assert pretrained.main(["verify", "--folder", str(folder)]) == 1  # pvae and vae345 are missing


def test_damaged_or_wrong_pretrained_files_are_refused(tmp_path):
    _, ckpt = _tiny_run(tmp_path / "run")
    folder = tmp_path / "pretrained"
    weights = pretrained.export(ckpt, "vae123", folder)
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="does not match its model card"):
        pretrained.load_pretrained("vae123", folder)
    with pytest.raises(pretrained.PretrainedError, match="preset 'vae123', not 'vae345'"):
        pretrained.export(ckpt, "vae345", folder)
    with pytest.raises(pretrained.PretrainedError, match="unknown pretrained model"):
        pretrained.load_pretrained("vae999", folder)
    with pytest.raises(pretrained.PretrainedError, match="no model card"):
        pretrained.load_pretrained("pvae", folder)


def test_shipped_models_match_their_cards():
    """The models committed in examples/dfcvae/pretrained load, verify and run."""
    for name in pretrained.NAMES:
        card = pretrained.read_card(name)
        assert card["preset"] == name and card["epochs"] >= 1 and card["images"] > 0
        assert card["sha256"] == sha256_file(pretrained.PRETRAINED_DIR / f"{name}.safetensors")
        model = pretrained.load_pretrained(name)
        assert (pretrained.PRETRAINED_DIR / f"{name}.safetensors").stat().st_size <= 10 * 1024 * 1024
        with torch.no_grad():
            out = model.decoder(model.encoder(torch.rand(2, 3, 64, 64))[0])
        assert torch.isfinite(out).all()


@pytest.mark.slow
def test_gallery_on_tiny_random_models(tmp_path):
    splits = [0] * 4 + [1] * 16 + [2] * 10
    data = celeba.load_celeba(make_celeba(tmp_path / "celeba", n_images=30, listed=30, splits=splits), verbose=False)
    models = {}
    for i, name in enumerate(pretrained.NAMES):
        torch.manual_seed(i)
        models[name] = vae.VAE().eval()
    page = gallery.make_gallery(models, data, tmp_path / "gallery", n_faces=4, n_vector=16)
    text = page.read_text()
    for png in ("samples_paper.png", "samples_released.png", "reconstructions.png", "interpolation.png", "smiling.png"):
        assert (tmp_path / "gallery" / png).is_file() and f"]({png})" in text, png
    with pytest.raises(celeba.CelebAError, match="test split"):
        no_test = celeba.load_celeba(make_celeba(tmp_path / "c2", n_images=6, listed=6), verbose=False)
        gallery.make_gallery(models, no_test, tmp_path / "g2")


def test_export_never_replaces_a_model_unless_asked(tmp_path, capsys):
    _, ckpt = _tiny_run(tmp_path / "run")
    shipped = {p: p.read_bytes() for p in pretrained.PRETRAINED_DIR.glob("vae123.*")}
    # the docstring's old example: would have replaced the shipped model and its card
    assert pretrained.main(["export", "--checkpoint", str(ckpt), "--name", "vae123"]) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "the shipped model" in err and "--folder" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in pretrained.PRETRAINED_DIR.glob("vae123.*")} == shipped
    folder = tmp_path / "mine"
    assert pretrained.main(["export", "--checkpoint", str(ckpt), "--name", "vae123", "--folder", str(folder)]) == 0
    first = (folder / "vae123.json").read_text()
    assert pretrained.main(["export", "--checkpoint", str(ckpt), "--name", "vae123", "--folder", str(folder)]) == 2
    assert pretrained.main(["export", "--checkpoint", str(ckpt), "--name", "vae123", "--folder", str(folder),
                            "--overwrite"]) == 0
    assert (folder / "vae123.json").read_text() == first
    line = pretrained.describe("vae123", folder)
    assert str(folder / "vae123.safetensors") in line and "an exported model" in line
    assert "the shipped model" in pretrained.describe("vae123")


@pytest.mark.parametrize("content", ["[]", "3", "not json"])
def test_verify_explains_a_damaged_card(tmp_path, capsys, content):
    _, ckpt = _tiny_run(tmp_path / "run")
    folder = tmp_path / "pretrained"
    pretrained.export(ckpt, "vae123", folder)
    (folder / "vae123.json").write_text(content)
    assert pretrained.main(["verify", "--folder", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"vae123: model card {folder / 'vae123.json'}" in out and "restore it from git" in out


@pytest.mark.parametrize("field, value", [("latent", "abc"), ("latent", 0), ("latent", True), ("latent", 1.5),
                                          ("steps", "7"), ("epochs", -1), ("sha256", 3), ("latent", None)])
def test_a_hand_edited_card_field_is_a_pretrained_error(tmp_path, capsys, field, value):
    """Issue 35 item 12: a card field of the wrong type or range (``"latent": "abc"`` used to give a ValueError
    traceback) or a missing one is a PretrainedError naming the card, the field and the fix, like other damage."""
    _, ckpt = _tiny_run(tmp_path / "run")
    folder = tmp_path / "pretrained"
    pretrained.export(ckpt, "vae123", folder)
    card_path = folder / "vae123.json"
    card = json.loads(card_path.read_text())
    if value is None:
        del card[field]
    else:
        card[field] = value
    card_path.write_text(json.dumps(card))
    with pytest.raises(pretrained.PretrainedError, match=f"model card {re.escape(str(card_path))} has") as info:
        pretrained.load_pretrained("vae123", folder)
    assert repr(field) in str(info.value) and "re-export the model" in str(info.value)
    assert pretrained.main(["verify", "--folder", str(folder)]) == 1
    assert f"vae123: model card {card_path}" in capsys.readouterr().out


# --------------------------------------------------------------------------- issue 35: an export never loses a model
def _pair(folder):
    """Every file in ``folder`` and its bytes."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _second_run(tmp_path, rows):
    """A second run of vae123 (other weights) whose log.csv holds ``rows`` (elapsed_s last) under its header."""
    _, ckpt = _tiny_run(tmp_path / "run2", step=9)
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in state["model"].items()}
    torch.save(state, ckpt)
    with open(ckpt.parent / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "lr", "loss", "kl", "rec", "images_per_s", "elapsed_s"])
        w.writerows(rows)
    return ckpt


def _exported(tmp_path):
    _, ckpt = _tiny_run(tmp_path / "run")
    folder = tmp_path / "models"
    pretrained.export(ckpt, "vae123", folder)
    return folder, _pair(folder)


def test_export_of_a_run_with_an_empty_log_keeps_the_previous_model(tmp_path, capsys):
    folder, before = _exported(tmp_path)
    ckpt = _second_run(tmp_path, [])  # only the header
    argv = ["export", "--checkpoint", str(ckpt), "--name", "vae123", "--folder", str(folder), "--overwrite"]
    assert pretrained.main(argv) == 2
    assert _pair(folder) == before  # nothing written, no pending or temporary file left
    err = capsys.readouterr().err
    assert "holds no logged steps" in err and f"move {ckpt.parent / 'log.csv'} aside" in err
    pretrained.load_pretrained("vae123", folder)
    (ckpt.parent / "log.csv").rename(tmp_path / "log.csv")  # the fix, as printed
    assert pretrained.main(argv) == 0
    card = pretrained.read_card("vae123", folder)
    assert card["steps"] == 9 and "wall_time_s" not in card
    pretrained.load_pretrained("vae123", folder)


def test_export_of_a_run_logged_at_0_s_has_no_rate(tmp_path):
    folder, _ = _exported(tmp_path)
    ckpt = _second_run(tmp_path, [[9, 0, 1e-3, 2, 1, 1, 10, 0.01]])  # rounds to 0.0 s
    pretrained.export(ckpt, "vae123", folder, overwrite=True)
    card = pretrained.read_card("vae123", folder)
    assert card["wall_time_s"] == 0 and "images_per_s" not in card and card["final_kl"] == 1
    pretrained.load_pretrained("vae123", folder)


def test_a_full_disk_during_export_leaves_the_previous_model(tmp_path, monkeypatch, capsys):
    import errno

    folder, before = _exported(tmp_path)
    ckpt = _second_run(tmp_path, [[9, 0, 1e-3, 2, 1, 1, 10, 5.0]])

    def full(path, text):  # the weights are written; the disk fills while the card is
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pretrained, "write_text_atomic", full)
    argv = ["export", "--checkpoint", str(ckpt), "--name", "vae123", "--folder", str(folder), "--overwrite"]
    assert pretrained.main(argv) == 2
    assert _pair(folder) == before
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "untouched" in err
    pretrained.load_pretrained("vae123", folder)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_a_kill_between_the_two_renames_leaves_a_loadable_model(tmp_path, monkeypatch):
    folder, before = _exported(tmp_path)
    ckpt = _second_run(tmp_path, [[9, 0, 1e-3, 2, 1, 1, 10, 5.0]])
    card_path = folder / "vae123.json"
    replace = pretrained.os.replace

    def killed_at_the_card(src, dst):
        if str(dst) == str(card_path):
            raise Killed
        replace(src, dst)

    monkeypatch.setattr(pretrained.os, "replace", killed_at_the_card)
    with pytest.raises(Killed):
        pretrained.export(ckpt, "vae123", folder, overwrite=True)
    monkeypatch.setattr(pretrained.os, "replace", replace)
    assert card_path.read_bytes() == before["vae123.json"]  # the old card, beside the new weights
    card = pretrained.read_card("vae123", folder)  # the pending card describes them
    assert card["steps"] == 9 and card["sha256"] == sha256_file(folder / "vae123.safetensors")
    pretrained.load_pretrained("vae123", folder)
    pretrained.update_card("vae123", folder, table1_average=80.0)  # puts it in place
    assert sorted(p.name for p in folder.iterdir()) == ["vae123.json", "vae123.safetensors"]
    assert pretrained.read_card("vae123", folder)["steps"] == 9
    pretrained.load_pretrained("vae123", folder)
