"""The report of a real 36-relation run, rendered by headless Chromium (slow; needs Debian's chromium
and chromium-driver: `apt-get install -y chromium chromium-driver`, and selenium from the tests extra).

The run is the first study's protocol on VSR random train with the packaged all-MiniLM-L6-v2 and its
random-init control: real features, real probes. Features go to the project cache
(``$SPATIAL_PROBING_CACHE/report-test-features``), so only the first run extracts (minutes on two CPUs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from spatial_probing.cli import main
from spatial_probing.data.sources import cache_root

REPO = Path(__file__).resolve().parents[1]


def _browser(width: int):
    """Headless Chromium driven by selenium through the system chromedriver (no driver download)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("chromium / chromedriver not installed (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
                f"--window-size={width},1000"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory, minilm_dir, vsr_dir) -> Path:
    """A fit output directory: original protocol, MiniLM and MiniLM+random-init on VSR random train."""
    features = cache_root() / "report-test-features"  # these two entries only
    for encoder in (f"sbert:{minilm_dir}", f"sbert:{minilm_dir}+random-init"):
        assert main(["extract", "--config", str(REPO / "configs/trainer/cpu.yaml"),
                     "--config", str(REPO / "configs/extract/sbert_mpnet.yaml"), "--model.encoder", encoder,
                     "--data.dataset", str(vsr_dir / "random"), "--feature_root", str(features),
                     "--trainer.enable_progress_bar", "false"]) == 0  # fmt: skip
    out = tmp_path_factory.mktemp("reproduction")
    assert main(["fit", "--config", str(REPO / "configs/probe/original_protocol.yaml"),
                 "--data.feature_root", str(features),
                 "--model.solver", "batched", "--out_dir", str(out), "--trainer.logger", "false",
                 "--trainer.enable_progress_bar", "false"]) == 0  # fmt: skip
    return out


@pytest.mark.slow
def test_report_renders_in_headless_chromium(reproduction, tmp_path):
    report = reproduction / "report.html"
    relations = pd.read_csv(reproduction / "comparison.csv", index_col=0).drop(index="MEAN").index
    assert len(relations) == 36
    browser = _browser(width=1400)
    try:
        browser.get(report.as_uri())
        images = browser.execute_script(
            "return [...document.images].map(i => ({alt: i.alt, width: i.naturalWidth, done: i.complete}))"
        )
        heatmap_rows = browser.execute_script("return document.getElementById('fig-heatmap').dataset.rows")
        browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight"))
        screenshot = tmp_path / "report.png"
        assert browser.save_screenshot(str(screenshot))
    finally:
        browser.quit()
    figures = sorted(p.stem for p in (reproduction / "figures").glob("*.png"))
    assert figures == ["baselines_controls", "distribution", "heatmap", "meta_categories", "scatter"]
    assert len(images) == len(figures) and all(i["done"] and i["width"] > 0 for i in images), images
    assert heatmap_rows == "36"
    # the heatmap's row labels are the 36 relations (SVG text stays text)
    svg = (reproduction / "figures" / "heatmap.svg").read_text()
    assert all(f">{r}<" in svg for r in relations), [r for r in relations if f">{r}<" not in svg]
    assert "macro-F1 (mean over folds)" in svg and "chance 0.5" in svg
    assert screenshot.stat().st_size > 100_000
    print(f"screenshot: {screenshot}")
