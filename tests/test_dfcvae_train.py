"""DFC-VAE model, objective and training program: shapes, loss terms, learning, checkpoints, resume, DDP."""
import os
import socket

import pytest
import torch

from tests.dfcvae_helpers import make_celeba, train_tiny

import tests.dfcvae_helpers  # noqa: F401  (puts examples/dfcvae on sys.path)
import objective
import train
import vae


def test_model_shapes_and_parameter_count():
    model = vae.VAE()
    x = torch.rand(2, 3, 64, 64)
    recon, mean, logvar = model(x)
    assert recon.shape == (2, 3, 64, 64) and mean.shape == logvar.shape == (2, 100)
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    encoder = sum(conv(a, b, 4) + bn(b) for a, b in [(3, 32), (32, 64), (64, 128), (128, 256)]) + 2 * (4096 * 100 + 100)
    decoder = (100 * 4096 + 4096) + sum(conv(a, b, 3) + bn(b) for a, b in [(256, 128), (128, 64), (64, 32)]) + conv(32, 3, 3)
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 7 and all(m.eps == 1e-3 for m in bns)
    last = model.decoder.body[-1]
    assert isinstance(last[-1], torch.nn.Conv2d)  # the output layer is linear: no BN, no activation
    assert abs(model.encoder.features[0][0].weight.std().item() - 0.02) < 0.005
    assert model.sample(3).shape == (3, 3, 64, 64)


def test_edge_pad_is_replication_pad_and_compiles_with_its_backward():
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64, requires_grad=True)
    ours, theirs = vae.EdgePad2d()(x), torch.nn.ReplicationPad2d(1)(x)
    assert torch.equal(ours, theirs)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(theirs, x, g)[0])
    block = vae._up(4, 3, last=True)  # upsample, pad, conv: the decoder's block inductor failed on
    xs = torch.randn(2, 4, 4, 4, requires_grad=True)
    (expected,) = torch.autograd.grad(block(xs).square().sum(), xs)
    (got,) = torch.autograd.grad(torch.compile(block)(xs).square().sum(), xs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_loss_terms_against_hand_computation(caffe_weights):
    torch.manual_seed(0)
    x, recon = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    mean, logvar = torch.randn(3, 100), torch.randn(3, 100) * 0.3
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)  # (3,)
    # the released main_cvae.lua: per-sample sum of squared errors in [0, 1], weight 1, both terms summed
    sse = sum(float((recon[i, c, h, w] - x[i, c, h, w]) ** 2) for i in range(3) for c in range(3)
              for h in (0, 17, 63) for w in (0, 5, 40, 63))  # hand-computed on a few pixels first
    small = objective.pixel_sse(recon[:, :, [0, 17, 63]][..., [0, 5, 40, 63]], x[:, :, [0, 17, 63]][..., [0, 5, 40, 63]])
    assert abs(small.sum().item() - sse) < 1e-4
    pixel = (recon - x).pow(2).sum(dim=(1, 2, 3))
    pv = objective.DFCObjective("pvae")(recon, x, mean, logvar)
    assert objective.DFCObjective("pvae").beta == 1.0
    torch.testing.assert_close(pv.total, kl.sum() + pixel.sum())
    torch.testing.assert_close(pv.rec, pixel.mean())
    pv = objective.DFCObjective("pvae", balance="per-sample")(recon, x, mean, logvar)
    torch.testing.assert_close(pv.total, kl.mean() + pixel.mean())
    from perceptloss import FeatureLoss

    feat = FeatureLoss("vgg19", ["relu3_1", "relu4_1", "relu5_1"], reduction="none")(recon, x)
    v345 = objective.DFCObjective("vae345", alpha=2.0, beta=0.25)(recon, x, mean, logvar)
    torch.testing.assert_close(v345.total, 2.0 * kl.sum() + 0.25 * feat.mean(), rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(v345.kl, kl.mean())
    # per-sample: the paper's Eq. 4-5 literally, 1/(2CHW) per layer times beta = 0.5 -> 0.25 per layer
    lit = objective.DFCObjective("vae345", balance="per-sample")(recon, x, mean, logvar)
    torch.testing.assert_close(lit.total, kl.mean() + 0.25 * feat.mean(), rtol=1e-5, atol=1e-2)
    with pytest.raises(ValueError, match="vae123"):
        objective.DFCObjective("vae124")


def test_a_few_steps_lower_the_loss(caffe_weights):
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4), size=64, mode="bilinear")
    model, obj = vae.VAE(), objective.DFCObjective("vae123")
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.5, 0.999))
    losses = []
    for _ in range(12):
        recon, mean, logvar = model(x)
        terms = obj(recon, x, mean, logvar)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        losses.append(terms.rec.item())
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


@pytest.fixture
def data_dir(tmp_path):
    return make_celeba(tmp_path / "celeba", n_images=40, listed=40)


run = train_tiny


def test_resume_is_bit_for_bit(data_dir, tmp_path):
    # 40 images, batch 8: 5 steps per epoch; 8 steps cross an epoch boundary (and a learning-rate halving)
    assert run(data_dir, tmp_path / "a", "--epochs", "2", "--max-steps", "8") == 0
    assert run(data_dir, tmp_path / "b", "--epochs", "2", "--max-steps", "3") == 0
    assert run(data_dir, tmp_path / "b", "--epochs", "2", "--max-steps", "8", "--resume") == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 1
    assert (tmp_path / "a" / "grids" / "recon_e01.png").is_file() and (tmp_path / "a" / "grids" / "samples_e01.png").is_file()
    rows = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 1 + 8
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_resume_with_another_config_is_refused(data_dir, tmp_path, capsys):
    assert run(data_dir, tmp_path / "a", "--max-steps", "1") == 0
    assert run(data_dir, tmp_path / "a", "--max-steps", "2", "--batch-size", "4", "--resume") == 2
    assert "batch_size" in capsys.readouterr().err


def test_bad_input_is_one_line(tmp_path, capsys):
    assert run(tmp_path / "missing", tmp_path / "o") == 2
    assert "--data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--preset", "vae999"])
    assert run(make_celeba(tmp_path / "c", n_images=4, listed=4), tmp_path / "o") == 2
    assert "fewer than one batch" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint(data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    assert run(data_dir, tmp_path / "i", "--max-steps", "6") == 130
    assert torch.load(tmp_path / "i" / "checkpoint.pt", weights_only=False)["step"] == 2


def _ddp_train(rank, world, port, data_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    assert run(data_dir, out, "--max-steps", "2", "--batch-size", "4", "--device", "cpu") == 0


def test_ddp_smoke_two_gloo_processes(data_dir, tmp_path):
    import torch.multiprocessing as mp

    run(data_dir, tmp_path / "warm", "--max-steps", "1")  # build the cache once beforehand
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_train, args=(2, port, data_dir, tmp_path / "ddp"), nprocs=2, join=True)
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and state["config"]["world_size"] == 2


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "off")])
def test_amp_auto_follows_the_hardware(native, expected, monkeypatch):
    monkeypatch.setattr(train, "bf16_native", lambda device: (native, "a reason"))
    assert train.parse_args([]).amp is None  # the default is auto
    for asked in (None, "auto"):
        assert train.resolve_amp(asked, torch.device("cpu")) == (expected, "auto: a reason")
    assert train.resolve_amp("fp16", torch.device("cpu"))[0] == "fp16"  # an explicit choice is kept


def test_amp_is_recorded_and_kept_on_resume(data_dir, tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setattr(train, "bf16_native", lambda device: (False, "no bf16 instructions"))
    out = tmp_path / "amp"
    assert run(data_dir, out, "--max-steps", "1") == 0
    assert "amp: off (auto: no bf16 instructions)" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["amp"] == "off"
    monkeypatch.setattr(train, "bf16_native", lambda device: (True, "bf16 instructions"))  # another machine
    assert run(data_dir, out, "--max-steps", "2", "--resume") == 0
    assert "amp: off (kept from the run being resumed)" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["amp"] == "off"
    assert run(data_dir, out, "--max-steps", "3", "--resume", "--amp", "fp16") == 2
    err = capsys.readouterr().err
    assert "keep the run's own --amp off (or start afresh with another --out)" in err
