"""The metric table (``perceptloss.metric_table``): ``create_metric`` and ``perceptloss score --metric`` build the
same loss for every name; user factories (``package.module:factory``) and registered names work through both; how
ambiguous names resolve; every error names the metric and says what to do. Random stand-in weights throughout."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import perceptloss
from perceptloss import metric_table
from perceptloss.__main__ import main as cli
from perceptloss.metric_table import MetricEntry, MetricError, create_metric, get_metric, list_metrics, register_metric

from .helpers import relative, save_features_checkpoint, standin_entries

FEATURE = "<backbone>:<preset or layers>"
FACTORY = "<package.module>:<factory>"

USER_MODULE = '''
import torch
from perceptloss import FeatureLoss
from perceptloss.metric_table import MetricEntry, register_metric

calls = []


class MeanAbs(torch.nn.Module):
    """A metric of one's own: the mean absolute pixel difference of each pair."""
    reduction = "none"

    def forward(self, x, y):
        return (x - y).abs().flatten(1).mean(1)


def make():
    return MeanAbs()


def make_feature():
    torch.manual_seed(0)
    return FeatureLoss("alexnet", ["relu1", "relu2"], weights=None, reduction="none")


def make_with(weights="default", dtype=None, scale=1.0):
    calls.append({"weights": weights, "dtype": dtype, "scale": scale})
    return MeanAbs()


def make_anything(**kwargs):
    calls.append(kwargs)
    return MeanAbs()


def wrong_type():
    return 3.0


def wrong_reduction():
    return FeatureLoss("alexnet", "relu1", weights=None)


class PerPixel(torch.nn.Module):
    def forward(self, x, y):
        return (x - y).abs()


def wrong_shape():
    return PerPixel()


class Broken(torch.nn.Module):
    def forward(self, x, y):
        raise RuntimeError("no forward today")


def broken():
    return Broken()


class Normalized(torch.nn.Module):
    reduction = "none"

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3)

    def forward(self, x, y):
        return (self.norm(x) - self.norm(y)).abs().flatten(1).mean(1)


def with_batchnorm():
    return Normalized()


def needs_argument(size):
    return MeanAbs()


not_callable = 5
'''

PLUGIN_MODULE = '''
from perceptloss.metric_table import MetricEntry, register_metric
from pl_user_metrics.factories import MeanAbs

register_metric(MetricEntry("mean-abs", lambda **kw: MeanAbs(), description="mean absolute pixel difference"),
                overwrite=True)
'''


@pytest.fixture
def table(monkeypatch):
    """The metric table, restored after the test (register_metric's entries do not leak)."""
    monkeypatch.setattr(metric_table, "_ENTRIES", dict(metric_table._ENTRIES))
    return metric_table._ENTRIES


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """``pl_user_metrics`` (factories, a plugin, a module whose import fails) and a top-level ``plainmod`` and
    ``vgg19`` module on sys.path; forgotten by sys.modules afterwards."""
    root = tmp_path / "site"
    pkg = root / "pl_user_metrics"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "factories.py").write_text(USER_MODULE)
    (pkg / "plugin.py").write_text(PLUGIN_MODULE)
    (pkg / "needs_dep.py").write_text("import pl_no_such_dependency\n")
    (pkg / "syntax.py").write_text("def make(:\n")
    (root / "plainmod.py").write_text("from pl_user_metrics.factories import make\n")
    (root / "vgg19.py").write_text("def dfc123():\n    raise AssertionError('a backbone name must win')\n")
    monkeypatch.syspath_prepend(str(root))
    yield pkg
    for name in [m for m in sys.modules if m.split(".")[0] in ("pl_user_metrics", "plainmod", "vgg19")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def _trunk_files(tmp_path_factory):
    """Random trunks under torchvision's file names: AlexNet's and VGG16's ``features.*``, SqueezeNet 1.1 whole."""
    import torchvision
    from torchvision.models.vgg import cfgs, make_layers

    base = tmp_path_factory.mktemp("trunks")
    torch.manual_seed(0)
    files = {"alex": base / "alexnet-owt-7be5be79.pth", "squeeze": base / "squeezenet1_1-b8a52dc0.pth",
             "vgg16": base / "vgg16-397923af.pth"}
    save_features_checkpoint(torchvision.models.alexnet().features, files["alex"])
    torch.save(torchvision.models.squeezenet1_1().state_dict(), files["squeeze"])
    save_features_checkpoint(make_layers(cfgs["D"]), files["vgg16"])
    for net, backbone in (("st-alex", "alexnet_shift_tolerant"), ("st-vgg", "vgg16_shift_tolerant")):
        files[net] = base / f"{backbone}-random.pth"  # ST-LPIPS' trunks, in their own features.N naming
        torch.save(perceptloss.create_backbone(backbone, perceptloss.list_layers(backbone)[-1:], weights=None)[0]
                   .state_dict(), files[net])
    return files


@pytest.fixture
def trunk_files(_trunk_files):
    """``_trunk_files``, the ones under torchvision's names accepted while a test runs (``standin_entries``; the
    ST-LPIPS stand-ins have names of their own)."""
    with standin_entries(*(path for key, path in _trunk_files.items() if not key.startswith("st-"))):
        yield _trunk_files


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three random 64x64 RGB pairs: REF/*.png and DIST/*.png."""
    from PIL import Image

    base = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for side in ("ref", "dist"):
        (base / side).mkdir()
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / side / f"im{k}.png")
    return base / "ref", base / "dist"


def score(argv, capsys, tmp_path):
    """(exit code, stderr, the JSON summary or None) of ``perceptloss score`` run in this process."""
    ref, dist = argv[:2]
    out = tmp_path / "summary.json"
    out.unlink(missing_ok=True)
    rest = [*map(str, argv[2:])]
    rest += [] if "--dtype" in rest else ["--dtype", "float32"]  # compared with the library's float32 losses
    code = cli(["score", str(ref), str(dist), *rest, "--workers", "0", "--quiet", "--json", str(out)])
    err = capsys.readouterr().err
    return code, err, json.loads(out.read_text()) if out.exists() else None


def pixels(folder):
    from PIL import Image

    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
                                         .transpose(2, 0, 1) / 255.0) for p in sorted(folder.iterdir())])


# ------------------------------------------------------------------------------------------------- the table


def test_the_table_lists_the_built_in_names():
    names = list_metrics()
    assert names[:7] == ["lpips-alex", "lpips-alex-v0.0", "lpips-vgg", "lpips-vgg-v0.0", "lpips-squeeze",
                         "lpips-squeeze-v0.0", "dists"]
    assert FEATURE in names and FACTORY in names
    assert perceptloss.list_metrics is list_metrics and perceptloss.create_metric is create_metric
    assert list_metrics("lpips-vgg*") == ["lpips-vgg", "lpips-vgg-v0.0"]
    for name in names:
        entry = get_metric(name)
        assert entry.name == name and entry.lower_is_better and entry.description and "\n" not in entry.description


def test_every_built_in_is_the_same_loss_in_python_and_on_the_command_line(folders, trunk_files, tmp_path, capsys):
    """Each built-in name (and two FeatureLoss names), given the same trunk file: the signature the CLI writes is
    create_metric's, and the loss is the class and version the name says."""
    weights = {"lpips-alex": "alex", "lpips-alex-v0.0": "alex", "lpips-vgg": "vgg16", "lpips-vgg-v0.0": "vgg16",
               "lpips-squeeze": "squeeze", "lpips-squeeze-v0.0": "squeeze", "dists": "vgg16",
               "stlpips-alex": "st-alex", "stlpips-vgg": "st-vgg",
               "vgg16:relu1_2,relu2_2": "vgg16", "vgg16:lpips": "vgg16"}
    built_in = [n for n in list_metrics() if metric_table._builtin(get_metric(n)) and "<" not in n]
    assert [n for n in built_in if n != "fdl"] == list(weights)[:9]  # fdl (images >= 80 px): tests/test_fdl.py
    if perceptloss.weights.find_source(perceptloss.weights.get_weights("stlpips-alex")) is None:
        weights = {k: v for k, v in weights.items() if not k.startswith("stlpips")}  # their heads: the package's
    argv = [*folders]
    for name, trunk in weights.items():
        argv += ["--metric", name, "--weights", f"{name}={trunk_files[trunk]}"]
    code, err, summary = score(argv, capsys, tmp_path)
    assert code == 0, err
    for name, trunk in weights.items():
        loss = create_metric(name, weights=trunk_files[trunk])
        assert summary["metrics"][name]["signature"] == loss.signature, name
        assert summary["metrics"][name]["n"] == 3
        assert loss.reduction == "none"
        if name.startswith("lpips"):
            assert isinstance(loss, perceptloss.LPIPS) and loss.version == ("0.0" if "v0.0" in name else "0.1")
            assert loss.net_name == name.split("-")[1] and loss.variant is None
        elif name.startswith("stlpips"):
            assert isinstance(loss, perceptloss.LPIPS) and loss.variant == "shift_tolerant"
            assert loss.net_name == name.split("-")[1]
        elif name == "dists":
            assert isinstance(loss, perceptloss.DISTS)
        else:
            assert isinstance(loss, perceptloss.FeatureLoss) and loss.layers == ("relu1_2", "relu2_2", "relu3_3",
                                                                                  "relu4_3", "relu5_3")[
                :2 if "," in name else 5]


def test_create_metric_passes_the_losses_options():
    loss = create_metric("lpips-alex", weights=None, heads=None, dtype=torch.float64, input_range=(-1, 1))
    assert loss.signature.count("dtype:float64") == 1 and "range:-1,1" in loss.signature
    x, y = (torch.rand(2, 3, 64, 64, dtype=torch.float64) * 2 - 1 for _ in range(2))
    out = loss(x, y)
    assert out.shape == (2,)
    with pytest.raises(MetricError, match="per-sample.*reduction='mean'"):
        create_metric("lpips-alex", weights=None, reduction="mean")


# ------------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name, entry", [
    ("vgg19:dfc123", FEATURE),                                        # a backbone shadows the module vgg19.py
    ("vgg16:relu1_2,relu2_2", FEATURE),
    ("timm:vit_base_patch16_224.augreg_in21k:blocks.3,blocks.6", FEATURE),  # dots in the model and the layers
    ("timm:resnet50", FEATURE),                                       # the timm family; its layers are missing
    ("pl_user_metrics.factories:make", FACTORY),                      # a dotted module path
    ("plainmod:make", FACTORY),                                       # a top-level module Python can import
    ("pl_not_installed.mod:make", FACTORY),                           # dotted: a factory even if it cannot import
    ("lpips-vgg", "lpips-vgg"),
])
def test_how_names_resolve(user_package, name, entry):
    assert get_metric(name).name == entry


def test_a_registered_name_comes_before_the_patterns(table, user_package):
    from pl_user_metrics.factories import MeanAbs

    register_metric(MetricEntry("vgg19:mine", MeanAbs, description="shadows vgg19's layers"))  # a class: no kwargs
    assert get_metric("vgg19:mine").name == "vgg19:mine"
    assert isinstance(create_metric("vgg19:mine"), MeanAbs)
    assert get_metric("vgg19:dfc123").name == FEATURE
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_metric(MetricEntry("vgg19:mine", lambda: MeanAbs()))
    for bad in ("two words", "a=b", ""):
        with pytest.raises(ValueError, match="without spaces or '='"):
            register_metric(MetricEntry(bad, lambda: MeanAbs()))


def test_a_registered_pattern(table, user_package):
    """A pattern entry's build gets the requested name first; user patterns are tried before the built-in ones."""
    from pl_user_metrics.factories import MeanAbs

    seen = []

    def build(name, **kwargs):
        seen.append(name)
        return MeanAbs()

    register_metric(MetricEntry("scaled-<k>", build, matches=lambda n: n.startswith("scaled-")))
    assert "scaled-<k>" in list_metrics()
    assert isinstance(create_metric("scaled-3"), MeanAbs) and seen == ["scaled-3"]


@pytest.mark.parametrize("name, text", [
    ("lpips-vgg16", "Did you mean 'lpips-vgg'"),
    ("DISTS", "Did you mean 'dists'"),
    ("vgg91:dfc123", "'vgg91' is neither a registered backbone"),
    ("vgg91:dfc123", "Did you mean 'vgg19:dfc123'"),
    ("vgg19", "vgg19:<preset or comma-separated layers>"),
    ("nonsense", "Metrics: lpips-alex, lpips-alex-v0.0"),
    ("timm:resnet50", "timm:<model>:<comma-separated layers>"),
    ("vgg19:", "give a preset or comma-separated layers"),
])
def test_unknown_and_incomplete_names(name, text):
    with pytest.raises(MetricError) as info:
        create_metric(name, weights=None)
    assert text in str(info.value)


# ------------------------------------------------------------------------------------------------- factories


def test_a_factory_through_python_and_the_command_line(user_package, folders, tmp_path, capsys):
    """``package.module:factory`` builds the module in both; the CLI's values are the factory's, and a perceptloss
    loss keeps its signature (a module without one gets the metric's name, its class and torch's version)."""
    from pl_user_metrics.factories import MeanAbs

    assert isinstance(create_metric("pl_user_metrics.factories:make"), MeanAbs)
    name, feature = "pl_user_metrics.factories:make", "pl_user_metrics.factories:make_feature"
    code, err, summary = score([*folders, "--metric", name, "--metric", feature], capsys, tmp_path)
    assert code == 0, err
    ref, dist = pixels(folders[0]), pixels(folders[1])
    expected = (dist - ref).abs().flatten(1).mean(1).double()
    assert summary["metrics"][name]["mean"] == pytest.approx(expected.mean().item(), rel=1e-6)
    assert summary["metrics"][name]["signature"].startswith(
        f"metric:{name}|class:pl_user_metrics.factories.MeanAbs|weights:unknown|torch:")
    assert summary["metrics"][feature]["signature"] == create_metric(feature).signature
    with torch.no_grad():
        values = create_metric(feature)(dist, ref)
    assert relative(torch.tensor(summary["metrics"][feature]["mean"]), values.double().mean().float()) < 1e-5


def test_a_factory_gets_the_keywords_it_accepts(user_package, folders, tmp_path, capsys):
    from pl_user_metrics import factories

    factories.calls.clear()
    create_metric("pl_user_metrics.factories:make_with", weights="w.pth", dtype=torch.float64, scale=2.0)
    create_metric("pl_user_metrics.factories:make_anything")
    assert factories.calls == [{"weights": "w.pth", "dtype": torch.float64, "scale": 2.0},
                               {"weights": "default", "dtype": None}]
    code, err, _ = score([*folders, "--metric", "pl_user_metrics.factories:make_with", "--weights",
                          "pl_user_metrics.factories:make_with=w.pth", "--dtype", "float64"], capsys, tmp_path)
    assert code == 0, err
    assert factories.calls[-1] == {"weights": "w.pth", "dtype": torch.float64, "scale": 1.0}
    # make() takes nothing: the defaults are not passed, anything else is an error saying so
    create_metric("pl_user_metrics.factories:make", weights="default", dtype=None)
    with pytest.raises(MetricError, match="takes no weights argument; leave it out"):
        create_metric("pl_user_metrics.factories:make", weights="w.pth")
    # dtype="auto" (the command line's default) is a preference: a factory without dtype is built as it is,
    # an explicit dtype it cannot take is an error
    create_metric("pl_user_metrics.factories:make", dtype="auto")
    with pytest.raises(MetricError, match="takes no dtype argument"):
        create_metric("pl_user_metrics.factories:make", dtype=torch.bfloat16)
    out = tmp_path / "default.json"
    assert cli(["score", *map(str, folders), "--metric", "pl_user_metrics.factories:make", "--workers", "0",
                "--quiet", "--json", str(out)]) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["metrics"]["pl_user_metrics.factories:make"]["n"] > 0


def test_the_check_leaves_the_module_as_it_was(user_package):
    """The per-sample check runs in eval mode without gradient: batch-norm statistics untouched, modes restored."""
    module = create_metric("pl_user_metrics.factories:with_batchnorm")
    assert module.training and module.norm.training and int(module.norm.num_batches_tracked) == 0
    assert torch.equal(module.norm.running_mean, torch.zeros(3))


@pytest.mark.parametrize("name, text", [
    ("pl_not_installed.mod:make", "cannot import module 'pl_not_installed.mod'.*put its folder on PYTHONPATH"),
    ("pl_user_metrics.nope:make", "cannot import module 'pl_user_metrics.nope'"),
    ("pl_user_metrics.needs_dep:make", "importing module 'pl_user_metrics.needs_dep' failed.*pl_no_such_dependency.*"
                                       "install what it imports"),
    ("pl_user_metrics.syntax:make", "importing module 'pl_user_metrics.syntax' raised SyntaxError.*fix the module"),
    ("pl_user_metrics.factories:mak", "has no attribute 'mak'. Did you mean 'pl_user_metrics.factories:make'"),
    ("pl_user_metrics.factories:not_callable", "is a int, not callable; name a function"),
    ("pl_user_metrics.factories:wrong_type", "returned float, not a torch.nn.Module; return the loss module"),
    ("pl_user_metrics.factories:wrong_reduction", "reduction='mean'; build it with reduction='none'"),
    ("pl_user_metrics.factories:wrong_shape", r"gave shape \(2, 3, 64, 64\) for 2 image pairs, not one value per pair"),
    ("pl_user_metrics.factories:broken", "raised RuntimeError \\(no forward today\\) on two"),
    ("pl_user_metrics.factories:needs_argument", "requires size, which create_metric does not give"),
])
def test_factory_errors(user_package, folders, tmp_path, capsys, name, text):
    """Each is a MetricError in Python and a one-line error (exit 2, no traceback) on the command line."""
    with pytest.raises(MetricError, match=text):
        create_metric(name)
    code, err, _ = score([*folders, "--metric", name], capsys, tmp_path)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and name in err


# ------------------------------------------------------------------------------------------------- the CLI


def test_a_registered_name_on_the_command_line(table, user_package, folders, tmp_path, capsys):
    """--plugin MODULE imports a module that registers a name; a name registered in this process works too."""
    code, err, _ = score([*folders, "--metric", "mean-abs"], capsys, tmp_path)
    assert code == 2 and "unknown metric 'mean-abs'" in err
    code, err, summary = score([*folders, "--plugin", "pl_user_metrics.plugin", "--metric", "mean-abs"], capsys,
                               tmp_path)
    assert code == 0, err
    ref, dist = pixels(folders[0]), pixels(folders[1])
    assert summary["metrics"]["mean-abs"]["mean"] == pytest.approx((dist - ref).abs().mean().item(), rel=1e-6)
    from pl_user_metrics.factories import MeanAbs

    register_metric(MetricEntry("mean-abs-2", lambda: MeanAbs()))
    code, err, summary = score([*folders, "--metric", "mean-abs-2"], capsys, tmp_path)
    assert code == 0, err
    assert summary["metrics"]["mean-abs-2"]["n"] == 3
    code, err, _ = score([*folders, "--plugin", "pl_no_such_plugin", "--metric", "dists"], capsys, tmp_path)
    assert code == 2 and err.count("\n") == 1 and "--plugin pl_no_such_plugin: cannot import it" in err


def test_unknown_names_on_the_command_line_suggest_one(folders, tmp_path, capsys):
    code, err, _ = score([*folders, "--metric", "lpips-vgg16"], capsys, tmp_path)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "unknown metric 'lpips-vgg16'. Did you mean 'lpips-vgg'" in err and ", ".join(list_metrics()) in err


def test_help_lists_the_table(capsys):
    with pytest.raises(SystemExit):
        cli(["score", "--help"])
    out = capsys.readouterr().out
    assert f"perceptloss.list_metrics():{','.join(list_metrics())}".replace(" ", "") in "".join(out.split())
    for name in list_metrics():
        assert f"{name} {get_metric(name).description}" in " ".join(out.split())


def test_the_table_is_the_only_naming_table():
    """score/metrics.py parses no names itself: no regular expression, no LPIPS table."""
    import inspect

    from perceptloss.score import metrics

    source = inspect.getsource(metrics)
    assert "re.compile" not in source and "LPIPS_NETS" not in source and "lpips-" not in source.split('"""')[2]
    assert metrics.create_metric is create_metric
