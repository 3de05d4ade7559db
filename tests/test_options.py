"""The options model: every loss takes every common option (``perceptloss.LossOptions``), each checked once with
one message, shown by ``inspect.signature`` and ``help()``; an unknown keyword names the valid ones."""
from __future__ import annotations

import doctest
import inspect
import pydoc

import pytest
import torch

import perceptloss
from perceptloss import DISTS, LPIPS, FeatureLoss, LossOptions, StyleLoss
from perceptloss.preprocessing import IDENTITY
from perceptloss._options import OPTIONS

from .helpers import TinyNet

LOSSES = {
    "feature": lambda **kw: FeatureLoss("vgg19", "dfc123", weights=None, **kw),
    "style": lambda **kw: StyleLoss("vgg19", ["relu1_1", "relu2_1"], weights=None, **kw),
    "lpips": lambda **kw: LPIPS("alex", weights=None, heads=None, **kw),
    "dists": lambda **kw: DISTS(weights=None, **kw),
}

#: A valid, non-default value of every common option, and the attribute the loss keeps it in.
NON_DEFAULT = {
    "input_range": ((-1.0, 1.0), "input_range"),
    "channels": ("per_channel", "channels"),
    "channel_reduction": ("none", "channel_reduction"),
    "check_range": ("warn", "check_range"),
    "check_inputs": (False, "check_inputs"),
    "reduction": ("sum", "reduction"),
    "dtype": (torch.float64, "dtype"),
    "memory_format": ("contiguous", "memory_format"),
    "fused": (False, "fused"),
    "checkpoint": (True, "checkpoint"),
}


def tiny(**kw):
    return FeatureLoss(TinyNet(), ["act1", "act2"], normalization=IDENTITY, **kw)


def test_the_table_is_the_typed_dict():
    assert list(OPTIONS) == list(LossOptions.__annotations__)
    assert set(NON_DEFAULT) | {"share_module"} == set(OPTIONS)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_accepts_every_common_option(name):
    kw = {option: value for option, (value, _) in NON_DEFAULT.items()}
    loss = LOSSES[name](**kw)
    for option, (value, attr) in NON_DEFAULT.items():
        assert getattr(loss, attr) == value, option
    assert loss.share_module is False
    x = torch.rand(2, 6, 40, 40, dtype=torch.float64) * 2 - 1  # per_channel: 6 grey images per sample
    out = loss(x, x.flip(0))
    assert out.shape == () and out.dtype == torch.float64  # "sum" over the (N, G) terms


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_signatures_show_every_option_with_the_losses_defaults(name):
    cls = {"feature": FeatureLoss, "style": StyleLoss, "lpips": LPIPS, "dists": DISTS}[name]
    params = inspect.signature(cls).parameters
    for option in OPTIONS:
        assert params[option].kind is inspect.Parameter.KEYWORD_ONLY
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert params["reduction"].default == ("none" if cls in (LPIPS, DISTS) else "mean")
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for option, (_, opt) in OPTIONS.items():
        assert option in text and opt.doc.split()[0] in text


def test_subclass_signatures_list_only_what_defines_them():
    own = lambda cls: [p for p in inspect.signature(cls.__init__, follow_wrapped=False).parameters
                       if p not in OPTIONS and p != "self"]
    assert own(FeatureLoss) == ["backbone", "layers", "layer_weights", "weights", "distance", "normalization",
                                "charbonnier_eps"]
    assert own(StyleLoss) == ["backbone", "layers", "layer_weights", "weights", "distance", "normalization"]
    assert own(LPIPS) == ["net", "version", "variant", "weights", "heads", "spatial"]
    assert own(DISTS) == ["weights", "alpha_beta"]


def test_the_readme_call_still_works():
    loss = FeatureLoss("vgg19", "dfc123", weights=None, dtype=torch.bfloat16, channels="replicate")
    assert loss.dtype == torch.bfloat16 and loss.channel_policy.mode == "replicate"


@pytest.mark.parametrize(
    "option, value, error, text",
    [
        ("input_range", (1, 0), ValueError, "input_range must be two finite numbers"),
        ("channels", "grey", ValueError, "channels must be one of"),
        ("channel_reduction", "max", ValueError, "channel_reduction must be 'mean' or 'none'"),
        ("check_range", "loud", ValueError, "check_range must be 'raise' or 'warn' or 'off'"),
        ("check_inputs", "yes", TypeError, "check_inputs must be True or False"),
        ("reduction", "avg", ValueError, "reduction must be 'mean' or 'sum' or 'none'"),
        ("dtype", torch.int8, ValueError, "dtype must be a floating torch.dtype"),
        ("memory_format", "nhwc", ValueError, "memory_format must be 'auto', 'channels_last' or 'contiguous'"),
        ("fused", "on", TypeError, "fused must be True, False or None"),
        ("share_module", 1, TypeError, "share_module must be True or False"),
        ("checkpoint", "yes", TypeError, "checkpoint must be True or False"),
    ],
)
def test_one_message_per_option(option, value, error, text):
    assert option in OPTIONS
    with pytest.raises(error, match=text.replace("(", r"\(")):
        tiny(**{option: value})
    with pytest.raises(error, match=text.replace("(", r"\(")):  # the same check, in the base, for every loss
        LPIPS("alex", weights=None, heads=None, **{option: value})


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(TypeError, match=r"FeatureLoss\(\) got an unexpected keyword argument 'dtyp'\. "
                                        r"Did you mean 'dtype'\?.*layer_weights.*checkpoint"):
        tiny(dtyp=torch.float64)
    with pytest.raises(TypeError, match="unexpected keyword argument 'layer_weight'.*Did you mean 'layer_weights'"):
        FeatureLoss("vgg19", "dfc123", weights=None, layer_weight=[1, 1, 1])
    with pytest.raises(TypeError, match="DISTS.*'alpha_beta'"):
        DISTS(weights=None, alphabeta="default")


def test_options_a_loss_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="share_module=True (reads|shares) an nn.Module"):
        LPIPS("alex", weights=None, heads=None, share_module=True)
    with pytest.raises(ValueError, match="share_module=True (reads|shares) an nn.Module"):
        FeatureLoss("vgg19", "dfc123", weights=None, share_module=True)
    with pytest.raises(ValueError, match="checkpoint=True with share_module=True"):
        tiny(share_module=True, checkpoint=True)


def test_to_memory_format_sets_the_activation_layout():
    loss = tiny()
    assert loss.to(memory_format=torch.contiguous_format) is loss
    assert loss.memory_format == torch.contiguous_format
    with pytest.raises(ValueError, match="memory_format must be"):
        loss.to(memory_format=torch.preserve_format)
    loss.to(torch.float64)
    assert loss.dtype == torch.float64


@pytest.mark.parametrize("cls", [FeatureLoss, StyleLoss, LPIPS, DISTS])
def test_class_docstring_examples_run(cls):
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(cls, cls.__name__, globs={"perceptloss": perceptloss})
    assert tests and tests[0].examples
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
