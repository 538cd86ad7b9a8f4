"""The web UI at ``/ui`` in a real headless browser: Debian's chromium driven by Playwright for Python.

Upload an image and read the label, open a run and see its confusion matrix, compare runs, change two knobs,
train and see the new run finish and appear under Runs. ``KENNER_UI_SCREENSHOTS=docs`` keeps a screenshot of each
tab (the ones in ``docs/`` were taken so).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from kenner.cli import main
from kenner.serve.app import ServeSettings, UiSettings, create_app
from kenner.serve.engine import load_engine
from synthetic import write_two_view_dataset
from test_serve import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = sync_api.expect
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (make test installs Debian's chromium as root)"
)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(URL of the UI, folder of runs, dataset manifest): a single-view linear run served with the UI."""
    root = tmp_path_factory.mktemp("ui")
    manifest = write_two_view_dataset(root / "data", groups_per_class=4)
    runs, cache = root / "runs", root / "cache"
    args = ["--data", str(manifest), "--cache-dir", str(cache), "--no-track", "--num-workers", "0", "-q"]
    args += ["--views", "obverse", "--device", "cpu"]
    assert main(["train", *args, "--out-dir", str(runs / "coins_linear"), "--epochs", "20"]) == 0
    settings = ServeSettings(ui=UiSettings(["obverse"], runs))
    app = create_app(lambda: load_engine(runs / "coins_linear", cache_dir=str(cache), device="cpu"), settings)
    with serving(app) as client:
        yield f"{client.base_url}/ui/", runs, manifest
    app.state.jobs.close()


@pytest.fixture(scope="module")
def page(ui: tuple[str, Path, Path]) -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(ui[0])
        page.wait_for_selector("#predict-button")
        yield page
        browser.close()


def _screenshot(page, name: str) -> None:
    """A small PNG of the page, kept in ``$KENNER_UI_SCREENSHOTS`` (``docs/`` holds the last ones taken)."""
    folder = os.environ.get("KENNER_UI_SCREENSHOTS")
    png = page.screenshot(full_page=True, type="png", scale="css")
    assert png.startswith(b"\x89PNG")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(png)).convert("RGB").quantize(64).save(Path(folder) / f"ui_{name}.png", optimize=True)


def _choose(page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_predict_tab_uploads_an_image_and_shows_the_label(page, ui: tuple[str, Path, Path]) -> None:
    image = ui[2].parent / "obverse" / "den02_1.png"
    page.get_by_role("tab", name="Predict").click()
    page.locator("#predict-obverse input[type=file]").set_input_files(str(image))
    page.locator("#predict-obverse img").wait_for()
    page.click("#predict-button")
    page.locator("#predict-label").get_by_text("denarius").first.wait_for()
    verdict = page.locator("#predict-verdict").inner_text()
    assert "denarius" in verdict or "unclassifiable" in verdict
    _screenshot(page, "predict")


def test_runs_tab_opens_a_run_with_its_confusion_matrix(page) -> None:
    page.get_by_role("tab", name="Runs").click()
    expect(page.locator("#runs-table")).to_contain_text("coins_linear")
    _choose(page, "#runs-choice", "coins_linear")
    image = page.locator("#runs-confusion img")
    image.wait_for()
    assert image.evaluate("img => img.naturalWidth") > 100  # the run's confusion_matrix.png, loaded
    page.locator("#runs-report").get_by_text("macro").first.wait_for()
    _screenshot(page, "runs")


def test_train_tab_trains_with_two_changed_knobs_and_the_run_appears(page, ui: tuple[str, Path, Path]) -> None:
    _, runs, manifest = ui
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("dataset").fill(str(manifest))
    page.get_by_label("run name").fill("from_ui")
    page.locator("#train-epochs input[type=number]").fill("7")
    page.locator("#train-epochs input[type=number]").press("Enter")
    page.locator("#train-lr input").fill("0.01")
    page.locator("#train-lr input").press("Enter")
    page.click("#train-button")
    page.locator("#train-status").get_by_text("finished").wait_for(timeout=180_000)
    config = (runs / "from_ui" / "run_config.json").read_text()
    assert '"epochs": 7' in config and '"lr": 0.01' in config
    _screenshot(page, "train")
    page.get_by_role("tab", name="Runs").click()
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#runs-table")).to_contain_text("from_ui")


def test_compare_tab_puts_runs_side_by_side(page) -> None:
    page.get_by_role("tab", name="Compare").click()
    page.click("#compare-button")  # refreshes the run list
    _choose(page, "#compare-choice", "coins_linear")
    _choose(page, "#compare-choice", "from_ui")
    page.keyboard.press("Escape")  # a multiselect's list stays open
    page.click("#compare-button")
    expect(page.locator("#compare-table")).to_contain_text("from_ui")
    expect(page.locator("#compare-table")).to_contain_text("coins_linear")
    _screenshot(page, "compare")


def test_train_job_can_be_cancelled(page, ui: tuple[str, Path, Path]) -> None:
    runs = ui[1]
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("run name").fill("cancelled")
    page.click("#train-button")
    page.locator("#train-status").get_by_text("running").wait_for()
    page.click("#train-cancel")
    page.locator("#train-status").get_by_text("cancelled").wait_for()
    assert not (runs / "cancelled" / "model" / "model_info.json").exists()
