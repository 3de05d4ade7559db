"""``perceptloss score --report DIR``: the HTML page on real CelebA pairs (paste-ready line, signature, histogram,
the pairs with the largest and smallest values with per-layer terms and difference maps), its folder policy,
and the paste-ready line's format."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from perceptloss.__main__ import main as cli
from perceptloss.score.statistics import paste_ready, summarize

from .score_images import make_folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("celeba"), count=10)


def gram_metric(**options):
    """A Gram (style) distance on a random VGG19: a criterion without spatial maps."""
    import torch

    from perceptloss import StyleLoss

    torch.manual_seed(0)
    return StyleLoss("vgg19", "dfc123", weights=None, reduction="none")


class Page(HTMLParser):
    """The tags of a page: every <img src>, <script>, <svg>, and the text."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.scripts, self.svgs, self.text = [], [], 0, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "script":
            self.scripts.append(attrs)
        elif tag == "svg":
            self.svgs += 1

    def handle_data(self, data):
        self.text.append(data)


def score(argv, capsys):
    """(exit code, stdout, stderr) of the CLI in this process, float32 (compared with the library's losses)."""
    code = cli(["score", *map(str, argv), "--dtype", "float32"])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_page_on_real_pairs(folders, tmp_path, capsys, caffe_weights):
    report = tmp_path / "report"
    code, out, err = score([folders["ref"], folders["jpeg10"], "--metric", "vgg19:dfc123", "--metric", f"{__name__}:gram_metric",
                            "--report", report, "--report-pairs", "3", "--json", tmp_path / "s.json",
                            "--workers", "0"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text())["metrics"]
    page = Page((report / "index.html").read_text())
    text = " ".join(page.text)
    for name, s in summary.items():
        assert s["reported"] in text and s["signature"] in text and s["reported"] in out
        assert re.fullmatch(r"[\d.]+ ± [\d.]+ \(95% CI, n = 10\)", s["reported"])
    assert page.svgs == 2 and not page.scripts
    # per metric 3 largest + 3 smallest pairs: reference and distorted, plus a map where the criterion has maps
    # (the feature distance has, the Gram distance has not)
    maps = [src for src in page.images if src.endswith("-map.png")]
    assert len(page.images) == 2 * 6 * 2 + 6 and len(maps) == 6
    assert all((report / src).is_file() and not src.startswith(("http", "/")) for src in page.images)
    assert "relu1_1" in text and "most different" in text and "most alike" in text
    # a second report replaces the first (the folder holds the marker)
    code, _, err = score([folders["ref"], folders["blur3"], "--metric", "vgg19:dfc123", "--report", report,
                          "--workers", "0", "--quiet"], capsys)
    assert code == 0, err
    assert "blur3" in (report / "index.html").read_text()


@pytest.mark.parametrize("case", ["other_files", "a_file", "no_parent"])
def test_report_folder_is_checked_before_scoring(folders, tmp_path, capsys, case):
    target = {"other_files": tmp_path / "mine", "a_file": tmp_path / "page.html", "no_parent": tmp_path / "x" / "y"}[case]
    if case == "other_files":
        target.mkdir()
        (target / "notes.txt").write_text("my work")
    if case == "a_file":
        target.write_text("mine")
    code, out, err = score([folders["ref"], folders["jpeg10"], "--metric", "vgg19:dfc123", "--report", target,
                            "--workers", "0", "--quiet"], capsys)
    assert code == 2 and "--report" in err and len(err.strip().splitlines()) == 1
    if case == "other_files":
        assert (target / "notes.txt").read_text() == "my work" and not (target / "index.html").exists()


def test_paste_ready_line():
    assert paste_ready({"n": 3640, "mean": 0.21312, "std": 0.12, "ci95": [0.20912, 0.21712]}) == \
        "0.213 ± 0.004 (95% CI, n = 3,640)"
    assert paste_ready({"n": 50, "mean": 12.345, "std": 1.0, "ci95": [11.1, 13.6]}) == "12 ± 1 (95% CI, n = 50)"
    assert paste_ready(summarize([0.5])) == "0.5 (n = 1)"
    assert paste_ready(summarize([])) == "no value (n = 0)"
    assert paste_ready(summarize([0.1, 0.2, 0.3, 0.5])) == "0.3 ± 0.3 (95% CI, n = 4)"
    assert paste_ready({"n": 10, "mean": 35688.0, "std": 1.0, "ci95": [31232.0, 40144.0]}) == \
        "36000 ± 4000 (95% CI, n = 10)"


_LOOK = r"""(() => {
  const imgs = [...document.images];
  return {loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length, images: imgs.length,
          svgBars: document.querySelectorAll('svg rect').length, scripts: document.scripts.length,
          pageWidth: document.documentElement.scrollWidth, window: window.innerWidth,
          paste: [...document.querySelectorAll('.paste')].map(p => p.innerText)};
})()"""


@pytest.mark.slow
def test_report_page_in_a_browser(folders, tmp_path, capsys, caffe_weights):
    """The page as a reader sees it in headless Chromium at 1,400 px: every thumbnail and heat map loads, the
    histograms have bars, no script, nothing wider than the window (PERCEPTLOSS_SCREENSHOTS=DIR keeps a picture)."""
    import os

    from .browser import HOW_TO_GET_ONE, Browser, find_browser

    binary = find_browser()
    if binary is None:
        pytest.skip(HOW_TO_GET_ONE)
    report = tmp_path / "report"
    code, _, err = score([folders["ref"], folders["jpeg10"], "--metric", "vgg19:dfc123", "--report", report,
                          "--report-pairs", "3", "--workers", "0", "--quiet"], capsys)
    assert code == 0, err
    with Browser(binary, width=1400, height=900) as browser:
        browser.open((report / "index.html").as_uri())
        seen = browser.evaluate(_LOOK)
        if os.environ.get("PERCEPTLOSS_SCREENSHOTS"):
            browser.screenshot(Path(os.environ["PERCEPTLOSS_SCREENSHOTS"]) / "score-report.png", full_page=True)
    assert seen["images"] == 18 and seen["loaded"] == 18  # 3 + 3 pairs: reference, distorted, heat map
    assert seen["svgBars"] == 30 and seen["scripts"] == 0 and seen["pageWidth"] <= seen["window"]
    assert len(seen["paste"]) == 1 and "95% CI, n = 10" in seen["paste"][0]
