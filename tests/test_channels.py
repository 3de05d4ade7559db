"""Channel policies: split/merge by hand, errors that name the policy to use, and every loss's ``channels=``
against explicitly replicated (or regrouped) RGB inputs."""
import pytest
import torch

from perceptloss.channels import ChannelPolicy, channel_policy, merge_channels, split_channels


def batch(n=2, c=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g), torch.rand(n, c, size, size, generator=g)


def test_split_by_hand():
    x, _ = batch(2, 5)
    per = split_channels(x, "per_channel")
    assert per.shape == (10, 3, 16, 16)
    for n in range(2):
        for c in range(5):
            for k in range(3):
                assert torch.equal(per[n * 5 + c, k], x[n, c])
    x6, _ = batch(2, 6)
    grouped = split_channels(x6, "groups")
    assert grouped.shape == (4, 3, 16, 16)
    assert torch.equal(grouped[1], x6[0, 3:6]) and torch.equal(grouped[2], x6[1, 0:3])
    grey, _ = batch(2, 1)
    rep = split_channels(grey, "replicate")
    assert rep.shape == (2, 3, 16, 16) and torch.equal(rep[1, 2], grey[1, 0])
    rgb, _ = batch(2, 3)
    for mode in ("rgb", "replicate", "groups"):
        assert split_channels(rgb, mode) is rgb


def test_merge_by_hand():
    terms = torch.arange(12.0).reshape(6, 2)  # N=2 samples, G=3 groups, 2 layers
    torch.testing.assert_close(merge_channels(terms, 2, 3), torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
    kept = merge_channels(terms, 2, 3, "none")
    assert kept.shape == (2, 3, 2) and torch.equal(kept[1, 2], terms[5])
    policy = ChannelPolicy("per_channel", "none")
    assert policy.merge(terms, 2).shape == (2, 3, 2)
    assert torch.equal(policy.expand_target(torch.tensor([[1.0], [2.0]]), 3).flatten(), torch.tensor([1.0, 2, 1, 2, 1, 2]))


def test_gradient_of_replication_sums_the_copies():
    grey = torch.rand(2, 1, 4, 4, requires_grad=True)
    split_channels(grey, "replicate").sum().backward()
    torch.testing.assert_close(grey.grad, torch.full_like(grey, 3.0))


@pytest.mark.parametrize(
    "mode, c, match",
    [
        ("rgb", 1, "channels='replicate'"),
        ("rgb", 4, "channels='per_channel'"),
        ("rgb", 6, "channels='groups'"),
        ("groups", 4, "not a multiple of 3"),
        ("replicate", 2, "channels='per_channel'"),
    ],
)
def test_errors_name_the_policy(mode, c, match):
    with pytest.raises(ValueError, match=match):
        split_channels(torch.rand(1, c, 8, 8), mode)


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels must be one of"):
        channel_policy("grey")
    with pytest.raises(ValueError, match="channel_reduction='none'.*per_channel"):
        channel_policy("rgb", "none")
    with pytest.raises(ValueError, match="channel_reduction must be"):
        channel_policy("per_channel", "max")
    assert ChannelPolicy("per_channel").groups(3) == 3 and ChannelPolicy("groups").groups(3) == 1
