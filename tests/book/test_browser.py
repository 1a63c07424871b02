"""The rendered book in a real browser: Debian's Chromium driven by Playwright (no browser download)."""

import os
import shutil
from pathlib import Path

import pytest

from helpers import book

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
#: figures each chapter must show (decoded images in its outputs)
FIGURES = {"01_data": 2, "02_hpo": 4, "03_debug_profile": 5, "04_deploy": 2, "05_lambda_autoscaling": 4,
           "06_performance": 2}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                     reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")]


@pytest.fixture(scope="module")
def browser():
    if not (HTML / "index.html").exists() or not all((HTML / "book" / f"{c}.html").exists() for c in FIGURES):
        book.run({})  # the tests run before `make book` in CI: build the book first
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def visit(browser, url, shot):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(url, wait_until="load")
    page.wait_for_timeout(300)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    return page, errors


def pages():
    return sorted(p for p in HTML.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)


def test_every_page_loads_without_console_errors_and_its_images_decode(browser):
    assert pages(), "no pages built"
    problems = []
    for path in pages():
        name = str(path.relative_to(HTML)).replace("/", "__").removesuffix(".html")
        page, errors = visit(browser, path.as_uri(), name)
        broken = page.eval_on_selector_all("img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0))"
                                                  ".map(e => e.src.slice(-60))")
        text = page.inner_text("body")
        if errors:
            problems.append(f"{name}: {errors}")
        if broken:
            problems.append(f"{name}: images that did not decode: {broken}")
        if "Traceback (most recent call last)" in text or page.query_selector_all(".output.traceback, .output.error"):
            problems.append(f"{name}: a rendered output holds a traceback or an error")
        page.close()
    assert not problems, "\n".join(problems)


def test_chapter_2_shows_the_comparison_of_starts_with_its_insights(browser):
    """Every start is a row (one training job each), and the computed insights speak of pretraining and
    fine-tuning: the default run's dataset is digits, on real ImageNet weights."""
    from helpers import transfer

    page, _ = visit(browser, (HTML / "book" / "02_hpo.html").as_uri(), "starts")
    tables = " ".join(page.eval_on_selector_all(".cell_output table", "els => els.map(e => e.innerText)"))
    for start in transfer.STARTS:
        assert start.label in tables, start.label
    items = " ".join(page.eval_on_selector_all(".cell_output li", "els => els.map(e => e.innerText)"))
    assert "ImageNet features" in items and "Fine-tuning (last stage tuned)" in items, items[:500]
    page.close()


@pytest.mark.parametrize("chapter", list(FIGURES))
def test_chapter_has_its_figures(browser, chapter):
    page, _ = visit(browser, (HTML / "book" / f"{chapter}.html").as_uri(), f"figures-{chapter}")
    decoded = page.eval_on_selector_all(".cell_output img", "els => els.filter(e => e.naturalWidth > 0).length")
    assert decoded >= FIGURES[chapter]
    page.close()


def test_navigation_reaches_every_chapter(browser):
    page, _ = visit(browser, (HTML / "index.html").as_uri(), "navigation")
    links = page.eval_on_selector_all("nav.bd-links a", "els => els.map(e => e.href)")
    for chapter in FIGURES:
        assert any(link.endswith(f"book/{chapter}.html") for link in links), chapter
    page.click(f"nav.bd-links a[href$='{list(FIGURES)[-1]}.html']")
    assert page.url.endswith(f"{list(FIGURES)[-1]}.html")
    page.close()


def test_profiler_report_opens_from_chapter_3_with_its_charts(browser):
    page, _ = visit(browser, (HTML / "book" / "03_debug_profile.html").as_uri(), "chapter-3")
    link = page.query_selector("a:has-text('Open the profiler report')")
    assert link is not None
    href = link.get_attribute("href")
    report, errors = visit(browser, (HTML / "book" / href).resolve().as_uri(), "profiler-report")
    assert not errors
    assert report.inner_text("h1") == "Profiler report"
    charts = report.eval_on_selector_all("img", "els => els.filter(e => e.naturalWidth > 0).length")
    assert charts >= 2
    page.close()
    report.close()


def test_mlflow_ui_lists_the_tuning_jobs_parent_run_and_its_trials_with_their_objective(browser):
    """The real UI (``mlflow ui`` over the book's store) in Chromium, as chapter 2's screenshot shows it."""
    import re

    from helpers import tracking
    from helpers.config import RunConfig

    cfg = RunConfig()  # the book's own run: its work folder is this test session's
    client = tracking.client(cfg)
    exp = tracking.experiment_id(client, cfg)
    parent = tracking.latest_tuning_run(client, exp)
    if parent is None:
        if os.environ.get("CI"):
            pytest.fail("the book built in this session left no tuning run in its MLflow store")
        pytest.skip("_build/ holds a book built outside this test session, with another MLflow store: "
                    "remove _build/ to rebuild it here")
    trials = tracking.trial_runs(client, exp, parent.info.run_id, ())
    rows = tracking.ui_tuning_view(cfg, parent.info.run_name, SHOTS / "mlflow-ui.png", browser=browser)
    name = parent.info.run_name  # the trials' job names start with it, the final training's does not
    assert sum(name in r and f"{name}-" not in r for r in rows) == 1  # the parent, expanded
    assert sum(f"{name}-" in r for r in rows) == len(trials) >= 4  # ... into every trial
    for trial in trials.itertuples():
        row = next(r for r in rows[1:] if trial.job in r)
        if trial.value != trial.value:  # NaN: a trial that failed before reporting shows "-"
            continue
        shown = float(re.findall(r"\d+\.\d+|\d+", row)[-1])  # the objective column, the last on the row
        assert shown == pytest.approx(trial.value, abs=1e-3), row
    # and the book shows the screenshot the build took, not the placeholder
    page, _ = visit(browser, (HTML / "book" / "02_hpo.html").as_uri(), "chapter-2")
    size = page.eval_on_selector("img[src$='mlflow-ui.png']", "e => [e.naturalWidth, e.naturalHeight]")
    assert size[0] >= 1000 and size[1] >= 500, size
    # at its own size, in a box that scrolls: scaled to the 624 px column its text was about 6 px
    shown = page.eval_on_selector("img[src$='mlflow-ui.png']", """e => [e.getBoundingClientRect().width,
        getComputedStyle(e.parentElement).overflowX, e.parentElement.scrollWidth > e.parentElement.clientWidth]""")
    assert shown[0] == pytest.approx(size[0], abs=2) and shown[1] == "auto" and shown[2], shown
    page.close()


#: chapters whose computed insights end the page (or a section of it)
INSIGHTS = ("01_data", "02_hpo", "03_debug_profile", "05_lambda_autoscaling", "06_performance")


@pytest.mark.parametrize("chapter", INSIGHTS)
def test_insights_are_a_list_whose_sentences_are_whole_at_800_px(browser, chapter):
    page = browser.new_page(viewport={"width": 800, "height": 1000})
    page.goto((HTML / "book" / f"{chapter}.html").as_uri(), wait_until="load")
    items = page.eval_on_selector_all(".cell_output li", "els => els.map(e => [e.scrollWidth, e.clientWidth])")
    assert items, f"{chapter}: the insights are not a list"
    assert all(scroll <= width + 1 for scroll, width in items), items
    page.close()


@pytest.mark.parametrize("page_name, claim", [("book/01_data", "computed by the run"),
                                              ("book/05_lambda_autoscaling", "computed by the run"),
                                              ("book/06_performance", "reference runs"),
                                              ("book/guides/sagemaker", None), ("book/intro", None)])
def test_the_footer_claims_computed_numbers_only_where_they_are(browser, page_name, claim):
    page, _ = visit(browser, (HTML / f"{page_name}.html").as_uri(), "footer-" + page_name.replace("/", "__"))
    footer = page.query_selector(".extra_footer")
    if claim is None:
        assert footer is None or not footer.inner_text().strip()
    else:
        assert footer is not None and claim in footer.inner_text()
    page.close()


#: An element whose content is wider than its box, with no ancestor (up to the page's article) that scrolls it:
#: content cut off (or spilling over the margin) rather than scrolling on purpose.
CUT_OFF = """els => els.filter(e => {
    if (e.scrollWidth <= e.clientWidth + 1 || e.clientWidth === 0) return false;
    for (let a = e; a && a.tagName !== 'ARTICLE' && a.tagName !== 'MAIN'; a = a.parentElement) {
        if (['auto', 'scroll'].includes(getComputedStyle(a).overflowX)) return false;
    }
    return true;
}).map(e => `${e.tagName} ${e.scrollWidth}>${e.clientWidth}: ${e.textContent.trim().slice(0, 60)}`)"""


@pytest.mark.parametrize("chapter", list(FIGURES))
def test_at_1200_px_nothing_is_cut_off_and_nothing_is_noise(browser, chapter):
    """Every output block and table fits or scrolls; no stderr block, no empty block (the SDK's ``wait()`` draws an
    empty panel: ``helpers.book.drop_empty_outputs``); no absolute path of the build machine."""
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto((HTML / "book" / f"{chapter}.html").as_uri(), wait_until="load")
    assert page.eval_on_selector_all(".cell_output *", CUT_OFF) == []
    assert page.query_selector_all(".cell_output .stderr, .cell_output .output.stderr") == []
    assert page.eval_on_selector_all(".cell_output pre", "els => els.filter(e => !e.textContent.trim()).length") == 0
    text = page.inner_text("article") if page.query_selector("article") else page.inner_text("body")
    for path in ("/tmp/", str(ROOT), str(Path.home())):
        assert path not in text, f"{chapter} shows {path}"
    # the check itself: a block that overflows a box that does not scroll is found
    page.evaluate("""() => { const d = document.createElement('div'); d.style.overflow = 'hidden';
        d.style.width = '100px'; d.innerHTML = '<span style="display:inline-block;width:500px">wide</span>';
        document.querySelector('.cell_output').appendChild(d); }""")
    assert page.eval_on_selector_all(".cell_output *", CUT_OFF) == ["DIV 500>100: wide"]
    page.close()
