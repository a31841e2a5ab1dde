"""The built site in a real browser: Debian's chromium driven by Playwright (CI installs it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

from kdbench.site import data
from kdbench.site.serve import make_server

from .conftest import EVIL_METHOD, EVIL_NOTE

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (CI installs Debian's chromium; locally: apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def base_url(built_site: Path) -> Iterator[str]:
    server = make_server(built_site, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page that records console errors, uncaught exceptions, dialogs and failed requests."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    pg.on("requestfailed", lambda r: pg.problems.append(f"request failed: {r.url}"))
    yield pg
    ctx.close()


def _column(pg: Any, table: str, index: int) -> list[str]:
    return pg.eval_on_selector_all(f"#{table} tbody tr:not([hidden])",
                                   f"rows => rows.map(r => r.cells[{index}].dataset.value)")


def test_sorting_a_column_reorders_rows(page: Any, base_url: str) -> None:
    page.goto(base_url + "task/classification/small/")
    headers = page.eval_on_selector_all("#results thead th", "hs => hs.map(h => h.textContent.trim())")
    delta = headers.index("Δ vs baseline")
    before = _column(page, "results", 0)
    page.click(f"#results thead th:nth-child({delta + 1})")
    values = _column(page, "results", delta)
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers) and len(numbers) >= 10
    assert all(v == "" for v in values[len(numbers):])  # no Δ (baseline, teacher) sorts last
    assert page.get_attribute(f"#results thead th:nth-child({delta + 1})", "aria-sort") == "ascending"
    page.click(f"#results thead th:nth-child({delta + 1})")
    desc = [float(v) for v in _column(page, "results", delta) if v]
    assert desc == sorted(numbers, reverse=True)
    page.click("#results thead th:nth-child(1)")
    names = _column(page, "results", 0)
    assert names == sorted(before, key=str.lower) and names != before
    assert page.problems == []


def test_filters_hide_rows(page: Any, base_url: str) -> None:
    page.goto(base_url)
    total = page.locator("#overview tbody tr").count()
    page.select_option(".filters select[data-filter=family]", "self")
    visible = page.eval_on_selector_all("#overview tbody tr:not([hidden])", "rs => rs.map(r => r.dataset.family)")
    assert visible and set(visible) == {"self"} and len(visible) < total
    assert page.locator(".filters .count").inner_text() == f"{len(visible)} of {total} rows"
    page.select_option(".filters select[data-filter=family]", "")
    page.select_option(".filters select[data-filter=teacher]", "external")
    kinds = page.eval_on_selector_all("#overview tbody tr:not([hidden])", "rs => rs.map(r => r.dataset.teacher)")
    assert kinds and set(kinds) == {"external"}
    page.goto(base_url + "task/classification/small/")
    page.fill(".filters input[data-filter=name]", "kd")
    names = page.eval_on_selector_all("#results tbody tr:not([hidden])", "rs => rs.map(r => r.dataset.name)")
    assert names and all("kd" in n for n in names) and "baseline" not in names
    assert page.problems == []


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value and not value.startswith(("data:", "#", "mailto:")):
                self.links.append(value)


def test_every_internal_link_resolves(page: Any, base_url: str, built_site: Path) -> None:
    """Crawl from the overview over HTTP (the browser's request context): every link and asset is
    found; and every relative link also resolves on disk, for a site opened as files."""
    seen: set[str] = set()
    todo = [base_url]
    broken = []
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        resp = page.request.get(url)
        if resp.status != 200:
            broken.append(f"{url}: {resp.status}")
            continue
        if not (url.endswith("/") or url.endswith(".html")):
            continue
        parser = _Links()
        parser.feed(resp.text())
        for link in parser.links:
            target = urldefrag(urljoin(url, link)).url
            target = target[: -len("index.html")] if target.endswith("/index.html") else target
            assert urlparse(target).netloc == urlparse(base_url).netloc, f"external link {link} on {url}"
            todo.append(target)
    assert broken == []
    pages = sum(1 for u in seen if u.endswith("/") or u.endswith(".html"))
    assert pages == sum(1 for _ in built_site.rglob("index.html"))  # every page is reachable
    assert pages > 50


def test_opened_from_disk_without_errors(page: Any, built_site: Path) -> None:
    for rel in ("index.html", "task/detection/small/index.html", "method/gold/index.html", "methodology/index.html"):
        page.goto((built_site / rel).as_uri())
        assert page.locator("h1").count() == 1
    page.goto((built_site / "index.html").as_uri())
    page.locator("#overview thead a[href='task/detection/small/index.html']").click()
    assert page.url.endswith("task/detection/small/index.html")
    assert page.problems == []


def test_no_console_errors_and_a_screenshot(page: Any, base_url: str, built_site: Path, tmp_path: Path) -> None:
    run = next(p.name for p in (built_site / "run").iterdir() if p.name.startswith("detection.small.gold"))
    for rel in ("", "task/classification/small/", "task/detection/small/", "method/pskd/", "method/teacher/",
                f"run/{run}/", "methodology/"):
        page.goto(base_url + rel)
        page.wait_for_load_state("load")
        assert page.locator("main h1").count() == 1, rel
    assert page.problems == []
    page.goto(base_url + "task/detection/small/")
    shot = tmp_path / "task.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert page.locator(".figs svg").count() == 2


def test_hostile_record_renders_as_inert_text(page: Any, base_url: str) -> None:
    slug = data.slug(EVIL_METHOD)
    run = f"classification.small.{slug}.seed2"
    for rel in ("", "task/classification/small/", f"method/{slug}/", f"run/{run}/"):
        page.goto(base_url + rel)
        page.wait_for_load_state("load")
        assert page.evaluate("typeof window.__xss") == "undefined", rel
        assert page.locator("img").count() == 0, rel  # the <img onerror> note is text, not an element
        body = page.inner_text("body")
        assert EVIL_METHOD in body, rel  # shown verbatim
    assert EVIL_NOTE in page.inner_text("body")
    page.goto(base_url + f"method/{slug}/")
    assert page.inner_text("h1") == EVIL_METHOD
    assert page.problems == []


def _scroll_width(pg: Any) -> int:
    return int(pg.evaluate("document.scrollingElement.scrollWidth"))


@pytest.mark.parametrize("width", [1280, 900])
def test_the_ranking_is_in_view_without_sideways_scrolling(browser: Any, base_url: str, width: int,
                                                           tmp_path: Path) -> None:
    """At 1280 px (and narrower) the page itself never scrolls sideways and the rank and method
    columns are inside the viewport, also after the settings have been scrolled to their far end."""
    ctx = browser.new_context(viewport={"width": width, "height": 900})
    pg = ctx.new_page()
    try:
        pg.goto(base_url)
        assert _scroll_width(pg) <= width, "the overview page scrolls sideways"
        shown = [int(r) for r in _column(pg, "overview", 0) if r]
        assert shown and shown == sorted(shown) and shown[0] == 1  # rows in rank order
        names = _column(pg, "overview", 1)
        assert names[-2:] == ["baseline", "teacher"]  # the reference rows last
        pg.screenshot(path=str(tmp_path / f"overview-{width}.png"))
        pg.eval_on_selector(".scroll", "el => { el.scrollLeft = el.scrollWidth; }")
        for cls in ("rank", "method"):
            box = pg.eval_on_selector(f"#overview tbody tr:first-child td.{cls}",
                                      "c => { const r = c.getBoundingClientRect(); return [r.left, r.right]; }")
            assert box[0] >= 0 and box[1] <= width, (cls, box)
        first = "#overview tbody tr:first-child"
        rank_right = pg.eval_on_selector(f"{first} td.rank", "c => c.getBoundingClientRect().right")
        method_left = pg.eval_on_selector(f"{first} td.method", "c => c.getBoundingClientRect().left")
        assert method_left >= rank_right - 1  # side by side, not on top of each other
        assert (tmp_path / f"overview-{width}.png").stat().st_size > 10_000
    finally:
        ctx.close()
