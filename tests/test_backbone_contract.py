"""Every registered backbone passes the same checks: frozen by construction, always eval, every layer name
resolves to a feature of the right batch size, requested order kept, no feature overwritten in place."""
import pytest
import torch

import perceptloss
from perceptloss import create_backbone, list_backbones, list_layers
from .helpers import assert_close


@pytest.fixture(params=list_backbones())
def backbone(request):
    return request.param


def test_every_layer_of_every_backbone(backbone):
    layers = list_layers(backbone)
    net, norm = create_backbone(backbone, layers, weights=None)
    assert list(net.parameters()) == [] and not net.training
    net.train()
    assert not net.training
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = net(x)
    assert len(feats) == len(layers) and all(f.shape[0] == 2 for f in feats)
    # asked in reverse order, one at a time: the same tensors (no in-place overwrite of a tapped output)
    rev, _ = create_backbone(backbone, tuple(reversed(layers)), weights=None)
    rev.load_trunk_state_dict(net.state_dict())
    with torch.no_grad():
        back = rev(x)
    for f, b in zip(feats, reversed(back)):
        assert_close(f, b)


def test_every_backbone_has_catalogued_weights(backbone):
    """A backbone's entries are its catalogue group's (the one place entries are kept), the default first."""
    spec = perceptloss.registry.get_backbone(backbone)
    names = perceptloss.list_weights(backbone)
    assert names and perceptloss.weights.get_weights(spec.weights_group).name == names[0]
    for name in names:
        entry = perceptloss.weights.get_weights(spec.weights_group, name)
        assert entry.name == name and perceptloss.weights.is_default(entry) == (name == names[0])


def test_a_backbone_can_load_another_backbones_entries():
    """vgg16_l2pool (DISTS' trunk) loads VGG16's file: its spec names VGG16's group, which holds the entry once."""
    spec = perceptloss.registry.get_backbone("vgg16_l2pool")
    assert spec.weights_group == "vgg16" and "vgg16_l2pool" not in perceptloss.weights.weight_groups()
    assert perceptloss.list_weights("vgg16_l2pool") == perceptloss.list_weights("vgg16") == ["torchvision"]


def test_registry_imports_no_family():
    """At import, perceptloss.registry imports no backbone module (test_import_graph checks every import of the
    registry and the weights package, function bodies and TYPE_CHECKING blocks included)."""
    import ast
    import inspect

    import perceptloss.registry as registry

    top = [n for n in ast.parse(inspect.getsource(registry)).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in top if "backbones" in (getattr(n, "module", "") or "")]
