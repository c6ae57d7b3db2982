"""The batch report: a static page whose squares link to their holes views, checked as HTML and in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt.batch import run_batch
from ptolemy_rt.report import render_report, score_colour, write_report
from ptolemy_rt.synthetic_session import make_epu_session


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory) -> Path:
    """A finished batch over a small synthetic EPU session (1 atlas, 3 squares with 2 images each)."""
    session = tmp_path_factory.mktemp("epu_report")
    make_epu_session(session, n_squares=3, per_square=2, seed=5, medmag_shape=(512, 720))
    out = tmp_path_factory.mktemp("report_out")
    assert run_batch([str(session)], out, workers=1, threads=1, progress=False) == 0
    return out


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.square_hrefs: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "square" in (a.get("class") or "").split():
            self.square_hrefs.append(a["href"])
        if tag == "image":
            self.images.append(a["href"])
        for key in ("href", "src"):
            if a.get(key):
                self.urls.append(a[key])


def test_score_colour():
    assert score_colour(None) == score_colour(float("nan")) == "#999999"
    assert score_colour(0.0) == "#440154" and score_colour(1.0) == "#fde725"
    assert score_colour(-3) == score_colour(0.0) and score_colour(7) == score_colour(1.0)
    assert re.fullmatch(r"#[0-9a-f]{6}", score_colour(0.37))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])))
def test_score_colour_is_the_plain_interpolation(score):
    """The per-hole colour is the stops' linear interpolation, channel by channel, as first written."""
    import math

    from ptolemy_rt.report import _STOPS

    if not math.isfinite(score):
        assert score_colour(score) == "#999999"
        return
    t = min(1.0, max(0.0, score)) * (len(_STOPS) - 1)
    i = min(int(t), len(_STOPS) - 2)
    rgb = [a + (b - a) * (t - i) for a, b in zip(_STOPS[i], _STOPS[i + 1])]
    assert score_colour(score) == "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


def test_page_links_counts_and_local_files(batch_dir):
    text = (batch_dir / "index.html").read_text(encoding="utf-8")
    summary = json.loads((batch_dir / "summary.json").read_text())
    page = _Collect()
    page.feed(text)
    # The square count shown is summary.json's, and every square is drawn as a link.
    shown = re.search(r'id="n-squares" data-count="(\d+)"', text)
    assert shown and int(shown.group(1)) == summary["totals"]["squares"] == len(page.square_hrefs) > 0
    # Every link inside the page has its target; squares with images show those images' holes.
    for href in page.urls:
        if href.startswith("#"):
            assert href[1:] in page.ids, href
    for row in summary["images"]:
        if row["kind"] == "holes" and row["atlas_square"]:
            view = f'id="sq-0-{row["atlas_square"][1]}"'
            section = text[text.index(view):text.index("</section>", text.index(view))]
            assert f"images/{row['id']}.jpg" in section
            assert section.count('class="hole"') >= row["count"] > 0 or row["count"] == 0
    # Nothing from the network: every resource is a file beside the page.
    assert not [u for u in page.urls if re.match(r"^[a-z]+://", u) or u.startswith("//")]
    for href in page.images:
        assert (batch_dir / href).is_file(), href
    assert "script" in page.tags and "<link" not in text and 'src="http' not in text
    # Sortable tables of images and squares.
    assert 'id="images-table"' in text and 'id="squares-table"' in text


def test_squares_table_shows_class_and_lattice_place(batch_dir):
    text = (batch_dir / "index.html").read_text(encoding="utf-8")
    table = text[text.index('id="squares-table"'):]
    table = table[: table.index("</table>")]
    head = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert head[6:10] == ["class", "found by", "row", "col"]
    summary = json.loads((batch_dir / "summary.json").read_text())
    atlas = next(r for r in summary["images"] if r["kind"] == "squares")
    targets = json.loads((batch_dir / "results" / f"{atlas['id']}.json").read_text())["targets"]
    rows = re.findall(r"<tr>(.*?)</tr>", table[table.index("<tbody>"):])
    assert len(rows) == len(targets) > 0
    for row, t in zip(rows, targets):
        cells = re.findall(r'<td data-v="([^"]*)">', row)
        assert cells[6:10] == ["" if t[k] is None else str(t[k]) for k in ("class", "found_by", "row", "col")]
    assert any(t["class"] for t in targets)


def test_report_is_deterministic_and_escapes(batch_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(batch_dir, copy)
    assert render_report(copy) == (batch_dir / "index.html").read_text(encoding="utf-8")
    summary = json.loads((copy / "summary.json").read_text())
    summary["notes"] = ['<script>alert("x")</script>']
    summary["images"][0]["error"] = "<b>bad</b>"
    (copy / "summary.json").write_text(json.dumps(summary))
    text = write_report(copy).read_text(encoding="utf-8")
    assert '<script>alert("x")' not in text and "&lt;script&gt;" in text and "<b>bad</b>" not in text


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}"]
        return subprocess.run([browser, *flags, *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_in_headless_chromium(batch_dir, tmp_path):
    """Loads without script errors, shows summary.json's square count, and a click on a square shows its holes."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); the browser test needs one")
    url = (batch_dir / "index.html").resolve().as_uri() + "?selftest=1"
    r = _headless(browser, "--virtual-time-budget=10000", "--dump-dom", url)
    assert r.returncode == 0, r.stderr[-2000:]
    found = re.search(r'<pre id="selftest"[^>]*>(.*?)</pre>', r.stdout, re.DOTALL)
    assert found and found.group(1), "the page's self-test did not run: " + r.stdout[-2000:]
    res = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    summary = json.loads((batch_dir / "summary.json").read_text())
    assert res["errors"] == [] and re.search(r'<ul id="errors">\s*</ul>', r.stdout)
    assert res["squares_shown"] == summary["totals"]["squares"] == res["square_links"]
    assert res["clicked"].startswith("#sq-") and res["hash"] == res["clicked"]
    assert res["visible"] is True and res["holes"] > 0
    assert res["images"] > 0 and res["images_failed"] == []
    assert res["sorted"] is True  # a click on a table header sorts its rows
    # The page renders (a blank page is a few kB of white), screenshot kept under the test's tmp_path.
    shot = tmp_path / "report.png"
    r = _headless(browser, "--hide-scrollbars", "--window-size=1400,1000", "--virtual-time-budget=10000",
                  f"--screenshot={shot}", (batch_dir / "index.html").resolve().as_uri())
    assert r.returncode == 0 and shot.stat().st_size > 50_000


def _hole_record(targets: list) -> dict:
    return {"kind": "holes", "targets": targets}


_coordinate = st.floats(-1e6, 1e6, allow_nan=False)
_value = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_coordinate, _coordinate, _value, _value), max_size=20))
def test_hole_marks_give_the_report_what_it_reads_from_the_file(holes):
    """hole_marks (sent by a batch's workers) stand for the result file's targets: the keys the report reads,
    the same values, None kept (a score of None is drawn grey and printed empty, not as NaN)."""
    from ptolemy_rt.report import _unmark, hole_marks

    targets = [{"x": x, "y": y, "x_um": None, "vertices": [[x, y], [x + 1, y], [x, y + 1]], "area": area,
                "score": score, "scores": {}} for x, y, area, score in holes]
    record = _hole_record(targets)
    parsed = json.loads(json.dumps(record, allow_nan=False))  # what _load reads back from the file
    assert _unmark(hole_marks(record))["targets"] == [{k: t[k] for k in ("x", "y", "area", "score")}
                                                      for t in parsed["targets"]]


def test_hole_marks_of_an_unsound_record_or_one_with_ints():
    from ptolemy_rt.report import _unmark, hole_marks

    good = {"x": 1.0, "y": 2.0, "vertices": [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "area": 3.0, "score": 0.5}
    # Unsound: no marks, the report reads the file and draws no targets (_load)
    assert hole_marks(_hole_record([good, {**good, "x": None}])) is None
    assert hole_marks(_hole_record([{**good, "vertices": [[0.0, 0.0]]}])) is None
    assert hole_marks(_hole_record([])) == b"" and _unmark(b"") == {"targets": []}  # sound, no holes
    # An int is printed as one (_fmt): no marks, the report reads the file.
    assert hole_marks(_hole_record([{**good, "score": 1}])) is None
    assert hole_marks(_hole_record([{**good, "area": 3}])) is None
    assert hole_marks(_hole_record([good])) is not None


def test_report_from_hole_marks_is_the_report_from_the_files(batch_dir):
    """The page a batch writes with its workers' hole marks is the one its files give (byte for byte)."""
    from ptolemy_rt.report import hole_marks

    summary = json.loads((batch_dir / "summary.json").read_text())
    marks = {}
    for row in summary["images"]:
        if row["kind"] == "holes" and row["status"] in ("ok", "empty"):
            marks[row["id"]] = hole_marks(json.loads((batch_dir / "results" / f"{row['id']}.json").read_text()))
    assert all(m is not None for m in marks.values()) and any(marks.values())
    page = render_report(batch_dir)
    assert render_report(batch_dir, marks) == page == (batch_dir / "index.html").read_text(encoding="utf-8")
    assert page.count('class="hole"') == sum(len(m) // 32 for m in marks.values()) > 0
