"""Channel policies: split/merge by hand, errors that name the policy to use, and every loss's ``channels=``
against explicitly replicated (or regrouped) RGB inputs."""
import pytest
import torch

from perceptloss.channels import ChannelPolicy, channel_policy, merge_channels, split_channels
from .helpers import assert_close


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
    assert_close(merge_channels(terms, 2, 3), torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
    kept = merge_channels(terms, 2, 3, "none")
    assert kept.shape == (2, 3, 2) and torch.equal(kept[1, 2], terms[5])
    policy = ChannelPolicy("per_channel", "none")
    assert policy.merge(terms, 2).shape == (2, 3, 2)
    assert torch.equal(policy.expand_target(torch.tensor([[1.0], [2.0]]), 3).flatten(), torch.tensor([1.0, 2, 1, 2, 1, 2]))


def test_gradient_of_replication_sums_the_copies():
    grey = torch.rand(2, 1, 4, 4, requires_grad=True)
    split_channels(grey, "replicate").sum().backward()
    assert_close(grey.grad, torch.full_like(grey, 3.0))


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


# ------------------------------------------------------------------------------- the losses' channels=


@pytest.fixture(scope="module")
def trunk_state():
    """One random VGG16 trunk for every loss built below (so that their values can be compared)."""
    from perceptloss import FeatureLoss

    torch.manual_seed(0)
    return FeatureLoss("vgg16", ["relu5_3"], weights=None).net.weight_tensors()


def feature_loss(trunk_state, **kw):
    from perceptloss import FeatureLoss

    loss = FeatureLoss("vgg16", ["relu1_2", "relu2_1"], weights=None, reduction="none", **kw)
    loss.net.load_trunk_state_dict(trunk_state)
    return loss


def test_replicate_equals_explicit_replication(trunk_state):
    rgb, grey = feature_loss(trunk_state), feature_loss(trunk_state, channels="replicate")
    x, y = batch(3, 1)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, expected = grey(xa, y), rgb(xb.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1))
    assert_close(got, expected)
    got.sum().backward()
    expected.sum().backward()
    assert_close(xa.grad, xb.grad)
    assert_close(grey(*batch(3, 3)), rgb(*batch(3, 3)))  # RGB images pass unchanged


def test_per_channel_and_groups_equal_explicit_loops(trunk_state):
    rgb = feature_loss(trunk_state)
    x, y = batch(2, 5)
    columns = torch.stack([rgb(x[:, c:c + 1].repeat(1, 3, 1, 1), y[:, c:c + 1].repeat(1, 3, 1, 1)) for c in range(5)], 1)
    assert_close(feature_loss(trunk_state, channels="per_channel")(x, y), columns.mean(1))
    kept = feature_loss(trunk_state, channels="per_channel", channel_reduction="none")
    assert_close(kept(x, y), columns)
    assert kept.per_layer(x, y).shape == (2, 5, 2)
    x6, y6 = batch(2, 6)
    groups = torch.stack([rgb(x6[:, 3 * g:3 * g + 3], y6[:, 3 * g:3 * g + 3]) for g in range(2)], 1)
    assert_close(feature_loss(trunk_state, channels="groups")(x6, y6), groups.mean(1))
    mean_loss = feature_loss(trunk_state, channels="groups")
    mean_loss.reduction = "mean"
    assert_close(mean_loss(x6, y6), groups.mean())


def test_set_target_with_groups(trunk_state):
    loss = feature_loss(trunk_state, channels="per_channel", channel_reduction="none")
    x, y = batch(3, 4)
    expected = loss(x, y[:1].expand_as(x))
    assert_close(loss.set_target(y[:1])(x), expected)
    assert_close(loss.set_target(y)(x), loss(x, y))


def test_the_printed_fix_works(trunk_state):
    x, y = batch(2, 1)
    with pytest.raises(ValueError, match="channels='replicate'") as err:
        feature_loss(trunk_state)(x, y)
    assert "(N, 3, H, W)" in str(err.value)
    feature_loss(trunk_state, channels="replicate")(x, y)  # as printed
    with pytest.raises(ValueError, match="not a multiple of 3"):
        feature_loss(trunk_state, channels="groups")(*batch(2, 4))
    with pytest.raises(ValueError, match="target"):
        feature_loss(trunk_state, channels="per_channel")(batch(2, 4)[0], batch(2, 5)[1])


def test_channels_last_images_are_told_to_permute(trunk_state):
    """(N, H, W, C) images with C in 1/3/4 are told to pass x.permute(0, 3, 1, 2) (and, where the policy needs it,
    the channels= that C then needs), not channels='per_channel'; the printed fix gives the channels-first value."""
    rgb = feature_loss(trunk_state)
    x, y = batch(2, 3, size=20)
    last_x, last_y = x.permute(0, 2, 3, 1).contiguous(), y.permute(0, 2, 3, 1).contiguous()
    with pytest.raises(ValueError) as err:
        rgb(last_x, last_y)
    text = str(err.value)
    assert "channels-last, (N, H, W, C) = (2, 20, 20, 3)" in text and text.endswith("pass x.permute(0, 3, 1, 2)")
    assert "per_channel" not in text
    assert_close(rgb(last_x.permute(0, 3, 1, 2), last_y.permute(0, 3, 1, 2)), rgb(x, y))  # as printed
    grey_x, grey_y = batch(2, 1, size=20)
    with pytest.raises(ValueError, match=r"pass x\.permute\(0, 3, 1, 2\); then, for 1 channel\(s\), one of: "
                                         r"channels='replicate'"):
        rgb(grey_x.permute(0, 2, 3, 1), grey_y.permute(0, 2, 3, 1))
    grey = feature_loss(trunk_state, channels="replicate")
    grey(grey_x.permute(0, 2, 3, 1).permute(0, 3, 1, 2), grey_y.permute(0, 2, 3, 1).permute(0, 3, 1, 2))  # as printed
    with pytest.raises(ValueError, match="channels='per_channel'"):  # channels first, 5 of them: not this advice
        rgb(*batch(2, 5, size=20))


def test_every_loss_accepts_channels(trunk_state):
    from perceptloss import DISTS, LPIPS, StyleLoss

    x, y = batch(2, 1, size=32)
    xr, yr = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
    style = StyleLoss("vgg16", ["relu1_2", "relu2_1"], weights=None, reduction="none", channels="replicate")
    style_rgb = StyleLoss("vgg16", ["relu1_2", "relu2_1"], weights=None, reduction="none")
    for s in (style, style_rgb):
        s.net.load_trunk_state_dict(trunk_state)
    assert_close(style(x, y), style_rgb(xr, yr))
    lp, lp_rgb = (LPIPS("vgg", weights=None, heads=None, **kw) for kw in ({"channels": "replicate"}, {}))
    lp.net.load_trunk_state_dict(trunk_state)
    lp_rgb.net.load_trunk_state_dict(trunk_state)
    assert_close(lp(x, y), lp_rgb(xr, yr))
    x4, y4 = batch(2, 4, size=32)
    maps = LPIPS("vgg", weights=None, heads=None, spatial=True, channels="per_channel", channel_reduction="none")
    maps.net.load_trunk_state_dict(trunk_state)
    assert maps(x4, y4).shape == (2, 4, 1, 32, 32)
    assert_close(maps(x4, y4)[:, 2], _spatial(trunk_state, x4[:, 2:3], y4[:, 2:3]))
    d, d_rgb = DISTS(weights=None, channels="per_channel"), DISTS(weights=None)
    d.net.load_trunk_state_dict(trunk_state)
    d_rgb.net.load_trunk_state_dict(trunk_state)
    expected = torch.stack([d_rgb(x4[:, c:c + 1].repeat(1, 3, 1, 1), y4[:, c:c + 1].repeat(1, 3, 1, 1)) for c in range(4)], 1)
    assert_close(d(x4, y4), expected.mean(1))


def _spatial(trunk_state, x, y):
    from perceptloss import LPIPS

    m = LPIPS("vgg", weights=None, heads=None, spatial=True)
    m.net.load_trunk_state_dict(trunk_state)
    return m(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1))


def test_volume_of_grey_images(trunk_state):
    from perceptloss import VolumeLoss

    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(1, 1, 4, 16, 16, generator=g), torch.rand(1, 1, 4, 16, 16, generator=g)
    grey, rgb = feature_loss(trunk_state, channels="replicate"), feature_loss(trunk_state)
    assert_close(VolumeLoss(grey, axes=(2,))(x, y),
                               VolumeLoss(rgb, axes=(2,))(x.repeat(1, 3, 1, 1, 1), y.repeat(1, 3, 1, 1, 1)))
