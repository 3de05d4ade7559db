"""The labelled post-training re-centring of the latent space (dfcvae.recentre)."""
import torch

from dfcvae import recentre, vae
from dfcvae.objective import kl_per_sample

from .helpers import make_celeba, train_tiny


def test_recentring_keeps_reconstructions_and_lowers_the_kl_by_half_the_squared_offset():
    torch.manual_seed(0)
    model = vae.VAE().eval().double()
    with torch.no_grad():
        model.encoder.mean.bias += 2.0  # an aggregate posterior away from the prior's centre
    x = torch.rand(32, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        mean, logvar = model.encoder(x)
        m = mean.mean(0)
        rc = recentre.recentred(model, m)
        mean2, logvar2 = rc.encoder(x)
        torch.testing.assert_close(rc.decoder(mean2), model.decoder(mean), rtol=1e-10, atol=1e-10)
        assert mean2.mean(0).abs().max() < 1e-10
        drop = kl_per_sample(mean, logvar).mean() - kl_per_sample(mean2, logvar2).mean()
    torch.testing.assert_close(drop, 0.5 * m.square().sum(), rtol=1e-10, atol=1e-10)


def test_the_command_writes_a_labelled_checkpoint_and_never_its_input(tmp_path, capsys):
    data = make_celeba(tmp_path / "celeba", n_images=20, listed=20)
    run = tmp_path / "run"
    assert train_tiny(data, run, "--epochs", "1", "--max-steps", "2") == 0
    src, dst = run / "checkpoint.pt", tmp_path / "rc.pt"
    assert recentre.main(["--checkpoint", str(src), "--out", str(src), "--data", str(data)]) == 2
    assert recentre.main(["--checkpoint", str(src), "--out", str(dst), "--data", str(data)]) == 0
    state = torch.load(dst, weights_only=True)
    assert state["config"]["recentred"]["images"] == 20 and state["config"]["recentred"]["offset_norm"] > 0
    assert recentre.main(["--checkpoint", str(dst), "--out", str(tmp_path / "again.pt"), "--data", str(data)]) == 2
    assert "already re-centred" in capsys.readouterr().err


def test_both_forms_decode_from_either_with_the_offset():
    """A re-centred model's samples at z - m are the raw model's at z (raw form from a re-centred model) and the
    raw model's at z + m are the re-centred model's at z, in both sampling conventions."""
    from dfcvae.latent import SAMPLINGS, sample

    torch.manual_seed(0)
    model = vae.VAE().eval().double()
    m = torch.randn(model.latent, dtype=torch.float64)
    rc = recentre.recentred(model, m)
    z = torch.randn(100, model.latent, dtype=torch.float64)
    for s in SAMPLINGS.values():
        torch.testing.assert_close(sample(rc, z, s, shift=-m), sample(model, z, s), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sample(model, z, s, shift=m), sample(rc, z, s), rtol=1e-9, atol=1e-9)


def test_the_offset_itself_is_recorded(tmp_path):
    data = make_celeba(tmp_path / "celeba", n_images=20, listed=20)
    run = tmp_path / "run"
    assert train_tiny(data, run, "--epochs", "1", "--max-steps", "2") == 0
    dst = tmp_path / "rc.pt"
    assert recentre.main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(dst), "--data", str(data)]) == 0
    raw, rc = (torch.load(p, weights_only=True) for p in (run / "checkpoint.pt", dst))
    record = rc["config"]["recentred"]
    m = torch.tensor(record["offset"])
    assert m.shape == (100,) and abs(float(m.norm()) - record["offset_norm"]) < 1e-3
    # the encoder's mean head moved by exactly -m
    torch.testing.assert_close(raw["model"]["encoder.mean.bias"] - rc["model"]["encoder.mean.bias"], m,
                               rtol=1e-6, atol=1e-6)
