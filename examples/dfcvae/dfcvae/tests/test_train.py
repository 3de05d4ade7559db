"""DFC-VAE model, objective and training program: shapes, loss terms, learning, checkpoints, resume, DDP."""
import os
import socket

import pytest
import torch

from dfcvae import objective, train, vae
from dfcvae.training import config

from .helpers import make_celeba, train_tiny


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


@pytest.mark.slow
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
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
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
    assert torch.load(tmp_path / "i" / "checkpoint.pt", weights_only=True)["step"] == 2


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ddp_runs(rank, world, ports, barrier, data_dir, runs):
    """One rank of a gloo job that trains ``runs`` ((out, extra args), ...) one after the other, each run with its
    own process group (port) and all ranks done with a run before any starts the next (its checkpoint is read)."""
    for port, (out, extra) in zip(ports, runs):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                          LOCAL_RANK=str(rank))
        assert run(data_dir, out, "--batch-size", "4", "--device", "cpu", *extra) == 0
        barrier.wait()


def _spawn(nprocs, data_dir, *runs):
    """Two processes (ranks) training ``runs`` in turn: one start-up of torch and the loss network for them all."""
    import torch.multiprocessing as mp

    barrier = mp.get_context("spawn").Barrier(nprocs)
    mp.spawn(_ddp_runs, args=(nprocs, _free_ports(len(runs)), barrier, data_dir, runs), nprocs=nprocs, join=True)


@pytest.mark.slow
def test_ddp_resume_is_bit_for_bit_with_each_ranks_own_random_state(data_dir, tmp_path):
    # two gloo processes; the VAE's reparameterisation noise differs per rank, so restoring rank 0's random state
    # on every rank (the old behaviour) would make the resumed run differ from the uninterrupted one
    run(data_dir, tmp_path / "warm", "--max-steps", "1")  # build the cache once beforehand
    a, b = tmp_path / "a", tmp_path / "b"
    _spawn(2, data_dir, (a, ("--max-steps", "4")), (b, ("--max-steps", "2")), (b, ("--resume", "--max-steps", "4")))
    a = torch.load(a / "checkpoint.pt", weights_only=True)
    b = torch.load(b / "checkpoint.pt", weights_only=True)
    for saved in (a, b):  # the checkpoints of a 2-rank run hold each rank's own random state
        assert saved["config"]["world_size"] == 2 and len(saved["rng"]["ranks"]) == 2
        assert not torch.equal(saved["rng"]["ranks"][0]["torch"], saved["rng"]["ranks"][1]["torch"])
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resuming_with_another_world_size_is_one_line(tmp_path):
    from dfcvae.checkpointing import CheckpointMismatch, check_compatible

    with pytest.raises(CheckpointMismatch, match=r"trained by 2 processes and this run has 1: resume it with 2 "
                                                 r"processes in all \(torchrun --nproc-per-node 2\)"):
        check_compatible({"world_size": 2}, {"world_size": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointMismatch, match="without torchrun"):
        check_compatible({"world_size": 1}, {"world_size": 4}, tmp_path / "checkpoint.pt")


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend this host has two CUDA devices (only the device-selection logic runs, nothing on a GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_one_gpu_per_process_under_torchrun(two_gpus):
    from dfcvae.distributed import DeviceError, pick_device

    cuda = torch.device
    assert pick_device("cuda", local_rank=1, world=2) == cuda("cuda", 1)
    assert pick_device(None, local_rank=1, world=2) == cuda("cuda", 1)
    assert pick_device("cuda", 0, 1) == cuda("cuda", 0) and pick_device("cuda:1", 0, 1) == cuda("cuda", 1)
    assert pick_device("cpu", 1, 2) == cuda("cpu")
    with pytest.raises(DeviceError, match="all on one GPU; pass --device cuda"):
        pick_device("cuda:1", local_rank=0, world=2)
    with pytest.raises(DeviceError, match=r"LOCAL_RANK 2 needs GPU 2 but 2 are visible.*--nproc-per-node 2"):
        pick_device("cuda", local_rank=2, world=3)
    with pytest.raises(DeviceError, match="only 2 CUDA devices are visible"):
        pick_device("cuda:3", 0, 1)


def test_the_process_group_is_bound_to_the_processs_gpu(two_gpus, monkeypatch):
    from dfcvae import distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    def init_process_group(backend, device_id=None):  # the signature of torch >= 2.3 (device_id supported)
        calls.append((backend, {"device_id": device_id}))

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    device = distributed.pick_device("cuda", *distributed.launch_env()[2:], world=2)
    dist = distributed.Distributed(device)
    assert dist.rank == 1 and not dist.main and dist.device == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)), ("nccl", {"device_id": torch.device("cuda", 1)})]


def test_random_states_of_other_hosts_and_layouts_are_remapped(two_gpus, monkeypatch):
    from dfcvae import checkpointing

    set_calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: set_calls.append(d))
    cpu = torch.get_rng_state()
    # an older checkpoint from a host with 4 GPUs on this 2-GPU host: no IndexError, the GPUs present are restored
    old = {"torch": cpu, "cuda": [torch.zeros(8, dtype=torch.uint8)] * 4}
    checkpointing.set_rng_state(checkpointing.rank_rng(old, 0, 1), torch.device("cuda", 0))
    assert set_calls == [0, 1]
    assert checkpointing.rank_rng(old, 1, 2) is None  # it held rank 0's state only
    new = checkpointing.pack_rng([{"torch": cpu, "cuda": torch.ones(8, dtype=torch.uint8)}, None])
    set_calls.clear()
    checkpointing.set_rng_state(checkpointing.rank_rng(new, 0, 2), torch.device("cuda", 1))
    assert set_calls == [torch.device("cuda", 1)]  # each process restores its own device's state only
    assert checkpointing.rank_rng(new, 1, 2) is None
    with pytest.raises(checkpointing.CheckpointMismatch, match="2 processes, this run has 3"):
        checkpointing.rank_rng(new, 0, 3)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "off")])
def test_amp_auto_follows_the_hardware(native, expected, monkeypatch):
    monkeypatch.setattr(config, "bf16_native", lambda device: (native, "a reason"))
    assert train.parse_args([]).amp is None  # the default is auto
    for asked in (None, "auto"):
        assert config.resolve_amp(asked, torch.device("cpu")) == (expected, "auto: a reason")
    assert config.resolve_amp("fp16", torch.device("cpu"))[0] == "fp16"  # an explicit choice is kept


def test_amp_is_recorded_and_kept_on_resume(data_dir, tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setattr(config, "bf16_native", lambda device: (False, "no bf16 instructions"))
    out = tmp_path / "amp"
    assert run(data_dir, out, "--max-steps", "1") == 0
    assert "amp: off (auto: no bf16 instructions)" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["amp"] == "off"
    monkeypatch.setattr(config, "bf16_native", lambda device: (True, "bf16 instructions"))  # another machine
    assert run(data_dir, out, "--max-steps", "2", "--resume") == 0
    assert "amp: off (kept from the run being resumed)" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["amp"] == "off"
    assert run(data_dir, out, "--max-steps", "3", "--resume", "--amp", "fp16") == 2
    err = capsys.readouterr().err
    assert "keep the run's own --amp off (or start afresh with another --out)" in err


def test_a_checkpoint_without_this_ranks_random_state_resumes_and_says_so(data_dir, tmp_path, capsys):
    from dfcvae.checkpointing import pack_rng

    out = tmp_path / "int"
    assert run(data_dir, out, "--max-steps", "2") == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["rng"] = pack_rng([None])  # as rank 1.. of an interrupted multi-process run finds it
    torch.save(state, out / "checkpoint.pt")
    assert run(data_dir, out, "--max-steps", "3", "--resume") == 0
    assert "holds no random state for this process" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["script", "module"])
def test_the_programs_run_without_path_edits(how):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(train.__file__).resolve().parents[1]  # examples/dfcvae
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if how == "script":  # as documented: python examples/dfcvae/train.py, from anywhere
        cmd, cwd = [sys.executable, str(example / "train.py"), "--help"], example.parents[1]
    else:
        cmd, cwd = [sys.executable, "-m", "dfcvae.pretrained", "verify"], example
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert ("--amp" in proc.stdout) if how == "script" else ("vae123: ok" in proc.stdout)


def test_time_budget_stops_with_a_checkpoint_and_resume_continues(data_dir, tmp_path, capsys):
    # a budget smaller than one step: it stops after the first step, saves, and says how to continue
    steps = ("--epochs", "2", "--max-steps", "6")  # 5 steps per epoch: the resumed part crosses an epoch
    assert run(data_dir, tmp_path / "b", *steps, "--time-budget", "1e-9") == 0
    err = capsys.readouterr().err
    assert "time budget" in err and "step 1/10" in err and "--resume" in err  # of the 2 epochs planned
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 1
    assert (tmp_path / "b" / "grids" / "recon_last.png").is_file()
    assert run(data_dir, tmp_path / "b", *steps, "--resume") == 0
    assert run(data_dir, tmp_path / "a", *steps) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    with pytest.raises(SystemExit):
        train.main(["--preset", "pvae", "--time-budget", "-1"])


def test_step_based_lr_halving_and_kept_snapshots_resume_bit_for_bit(data_dir, tmp_path):
    # 5 steps per epoch; halving every 3 steps: lr 1x for steps 1-3, 0.5x for 4-6, 0.25x for 7; snapshots at 2, 4, 6
    opts = ("--epochs", "2", "--halve-lr-every", "3", "--keep-every", "2", "--lr", "1e-3")
    assert run(data_dir, tmp_path / "a", *opts, "--max-steps", "7") == 0
    lrs = [float(r.split(",")[2]) for r in (tmp_path / "a" / "log.csv").read_text().splitlines()[1:]]
    assert lrs == [1e-3] * 3 + [5e-4] * 3 + [2.5e-4]
    kept = sorted(p.name for p in (tmp_path / "a" / "snapshots").glob("*.pt"))
    assert kept == ["step-000002.pt", "step-000004.pt", "step-000006.pt"]
    snap = torch.load(tmp_path / "a" / "snapshots" / "step-000004.pt", weights_only=True)
    assert snap["step"] == 4 and snap["config"]["halve_lr_every"] == 3
    # resumed across a halving, the run is the same
    assert run(data_dir, tmp_path / "b", *opts, "--max-steps", "4") == 0
    assert run(data_dir, tmp_path / "b", *opts, "--max-steps", "7", "--resume") == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2


def test_another_lr_schedule_is_refused_on_resume(data_dir, tmp_path, capsys):
    assert run(data_dir, tmp_path / "a", "--max-steps", "1") == 0
    assert run(data_dir, tmp_path / "a", "--max-steps", "2", "--halve-lr-every", "3", "--resume") == 2
    assert "halve_lr_every" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--preset", "pvae", "--halve-lr-every", "-1"])
