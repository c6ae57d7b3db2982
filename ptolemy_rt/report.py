"""A static HTML report of a batch folder (`OUTDIR/index.html`): opens from the file system, no server, no CDN.

It reads what the batch wrote (summary.json, results/<id>.json, images/<id>.jpg) and draws, in inline SVG over
the preview images beside the page: each atlas with its squares coloured by score, each square a link to a view
of its grid-square images with their holes drawn (a `:target` section: plain anchors, no script needed), the
summary figures, histograms of square scores, hole scores and hole spacings, and sortable tables.

The small script at the end sorts tables, writes any JavaScript error into the page (`#errors`), and with
`?selftest` in the URL clicks the first linked square and writes what it saw into `#selftest` (the browser test
reads it with `chromium --headless --dump-dom`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["hole_marks", "render_report", "score_colour", "write_report"]

# Viridis at five stops: readable on grey images and for colour-blind readers.
_STOPS = ((0.267, 0.005, 0.329), (0.230, 0.322, 0.546), (0.128, 0.567, 0.551), (0.369, 0.789, 0.383),
          (0.993, 0.906, 0.144))


# Each stop and the step to the next (the same floats as b - a at every call).
_SEGMENTS = tuple((a, tuple(y - x for x, y in zip(a, b))) for a, b in zip(_STOPS, _STOPS[1:]))


def score_colour(score: float | None) -> str:
    """#rrggbb for a score in [0, 1] (viridis), grey when there is none."""
    if score is None or not math.isfinite(score):
        return "#999999"
    t = min(1.0, max(0.0, float(score))) * (len(_STOPS) - 1)
    i = min(int(t), len(_STOPS) - 2)
    f = t - i
    (r, g, b), (dr, dg, db) = _SEGMENTS[i]
    # Called for every hole of a batch (thousands): one format, no per-channel generator.
    return f"#{round((r + dr * f) * 255):02x}{round((g + dg * f) * 255):02x}{round((b + db * f) * 255):02x}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _pts(vertices: list) -> str:
    return " ".join(f"{v[0]:.1f},{v[1]:.1f}" for v in vertices)


def _svg_image(href: str, rows: int, cols: int, body: str, css: str) -> str:
    return (f'<svg class="{css}" viewBox="-0.5 -0.5 {cols} {rows}" preserveAspectRatio="xMidYMid meet">'
            f'<image href="{_e(href)}" x="-0.5" y="-0.5" width="{cols}" height="{rows}"/>{body}</svg>')


def _holes_svg(row: dict, result: dict) -> str:
    circles = []
    for rank, t in enumerate(result.get("targets", [])):
        r = 0.4 * math.sqrt(max(float(t.get("area") or 0.0), 1.0))
        circles.append(f'<circle class="hole" cx="{t["x"]:.1f}" cy="{t["y"]:.1f}" r="{r:.1f}" '
                       f'stroke="{score_colour(t.get("score"))}"><title>hole {rank + 1}: score '
                       f'{_fmt(t.get("score"))}</title></circle>')
    return _svg_image(f"images/{row['id']}.jpg", row["rows"], row["cols"], "".join(circles), "holes")


def _histogram(values: list[float], title: str, unit: str, lo: float | None = None, hi: float | None = None,
               bins: int = 20) -> str:
    """An inline SVG bar chart of `values` (counts per bin, hover for the range)."""
    w, h, pad = 320, 140, 22
    vals = [v for v in values if v is not None and math.isfinite(v)]
    head = f'<figure class="hist"><figcaption>{_e(title)} (n = {len(vals)})</figcaption>'
    if not vals:
        return head + '<p class="none">no values</p></figure>'
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
    top = max(counts)
    bw = (w - 2 * pad) / bins
    bars = []
    for i, c in enumerate(counts):
        bh = (h - 2 * pad) * c / top
        a, b = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        bars.append(f'<rect x="{pad + i * bw:.1f}" y="{h - pad - bh:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}">'
                    f'<title>{_fmt(a)}-{_fmt(b)} {_e(unit)}: {c}</title></rect>')
    axis = (f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}"/>'
            f'<text x="{pad}" y="{h - 6}">{_fmt(lo)}</text>'
            f'<text x="{w - pad}" y="{h - 6}" text-anchor="end">{_fmt(hi)} {_e(unit)}</text>'
            f'<text x="{pad}" y="{pad - 8}">{top}</text>')
    return head + f'<svg viewBox="0 0 {w} {h}">{"".join(bars)}{axis}</svg></figure>'


def _table(table_id: str, header: list[str], rows: list[list[tuple[str, Any]]]) -> str:
    """A sortable table: each cell is (html, sort value)."""
    head = "".join(f'<th data-col="{i}">{_e(h)}</th>' for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f'<td data-v="{_e("" if v is None else v)}">{cell}</td>' for cell, v in row)
        body.append(f"<tr>{cells}</tr>")
    return (f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def finite_number(value: Any) -> bool:
    """Whether `value` is an int or float (no bool) that is finite as a float: an int past float's range (1 and 400
    zeros in an edited file) is not, as no value drawn or summed can be made of it."""
    kind = type(value)
    try:  # math.isfinite(10**400) raises OverflowError: --resume ended with exit 70 on such a result file
        if kind is float or kind is int:  # what JSON gives (called ~12 times a hole): one test of the type
            return math.isfinite(value)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False



def sound_result(data: Any, centres: bool = True) -> bool:
    """Whether a result file's content has what the report and the square linking read: a dict whose targets
    are dicts with finite x, y (and area), a finite score or none, and a polygon: at least 3 [x, y] vertices
    (every result ptolemy-rt writes has them; the report draws them, the linking tests points in them). A damaged
    results/*.json (a list, targets of text) made the report an internal error (exit 70). `centres=False`: x and
    y may be absent (the square linking reads the vertices alone)."""
    if not isinstance(data, dict) or not isinstance(data.get("targets", []), list):
        return False
    for t in data.get("targets", []):
        if not isinstance(t, dict) or (centres and not (finite_number(t.get("x")) and finite_number(t.get("y")))):
            return False
        score, area = t.get("score"), t.get("area")
        if (score is not None and not finite_number(score)) or (area is not None and not finite_number(area)):
            return False
        vertices = t.get("vertices")
        if not (isinstance(vertices, list) and len(vertices) >= 3):
            return False
        for v in vertices:
            if not (isinstance(v, list) and len(v) == 2 and finite_number(v[0]) and finite_number(v[1])):
                return False
    return True


def _load(outdir: Path, row: dict) -> dict:
    try:
        data = json.loads((outdir / "results" / f"{row['id']}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {"targets": []}
    return data if sound_result(data) else {"targets": []}


# What the report reads of a holes result's targets (_holes_svg, the hole score histogram): hole_marks packs these.
_MARKED = ("x", "y", "area", "score")


def hole_marks(record: dict) -> bytes | None:
    """What the report reads of a holes result, from the record its JSON file holds (results' to_dict): each
    target's x, y, area and score packed as float64s (NaN for none); None where the report would find the file
    unsound (sound_result) or a value is no plain float: the report then reads the file.

    A batch sends this beside each image's files, so that its report, written after the last image while the
    workers are gone, need not read and parse every result again: reading, json.loads and sound_result took
    ~2.3 ms an image of the batch process (0.23 s on one core at the end of a 100-image batch of the synthetic
    set; unpacking the marks 0.12 ms). 32 bytes a hole."""
    from array import array

    if not sound_result(record):  # almost never, for a result just written: _load finds it so and draws none
        return None
    flat: list[float] = []
    nan = math.nan
    for t in record.get("targets", []):
        x, y, area, score = (t.get(k) for k in _MARKED)
        # JSON keeps a float's value and an int's type: an int would be formatted as one (_fmt), so not packed
        if type(x) is not float or type(y) is not float or (area is not None and type(area) is not float) \
                or (score is not None and type(score) is not float):
            return None
        flat += (x, y, nan if area is None else area, nan if score is None else score)
    return array("d", flat).tobytes()


def _unmark(packed: bytes) -> dict:
    """The targets hole_marks packed, as _load reads them from the file (the keys the report reads)."""
    from array import array

    values = array("d")
    values.frombytes(packed)
    return {"targets": [{"x": values[i], "y": values[i + 1],
                         "area": None if math.isnan(values[i + 2]) else values[i + 2],
                         "score": None if math.isnan(values[i + 3]) else values[i + 3]}
                        for i in range(0, len(values), len(_MARKED))]}


def render_report(outdir: str | Path, marks: Mapping[str, bytes] | None = None,
                  records: Mapping[str, dict] | None = None) -> str:
    """The HTML text of the report of a batch folder (reads summary.json and results/).

    `marks`: hole_marks of holes results by image id, read in place of those results' files (the same page).
    `records`: results by image id as read from their files and sound (sound_result), not read again (a batch's
    atlas results, which batch.link_squares has read)."""
    outdir = Path(outdir)
    summary = json.loads((outdir / "summary.json").read_text(encoding="utf-8"))
    rows = summary["images"]
    totals = summary["totals"]
    done = [r for r in rows if r["status"] in ("ok", "empty")]
    atlases = [r for r in done if r["kind"] == "squares"]
    grids = [r for r in done if r["kind"] == "holes"]
    marks, records = marks or {}, records or {}
    results = {r["id"]: _unmark(marks[r["id"]]) if r["kind"] == "holes" and r["id"] in marks
               else records[r["id"]] if r["id"] in records else _load(outdir, r) for r in done}
    image_index = {r["id"]: n for n, r in enumerate(rows)}
    atlas_index = {r["id"]: n for n, r in enumerate(atlases)}
    linked: dict[tuple[str, int], list[dict]] = {}
    for r in grids:
        if r.get("atlas_square"):
            linked.setdefault((r["atlas_square"][0], r["atlas_square"][1]), []).append(r)

    def view_of(r: dict) -> str:
        link = r.get("atlas_square")
        if r["kind"] == "holes" and link and link[0] in atlas_index:
            return f"#sq-{atlas_index[link[0]]}-{link[1]}"
        return f"#img-{image_index[r['id']]}"

    parts: list[str] = []
    # Summary figures.
    spacings = [r["spacing_px"] for r in grids if r.get("spacing_px")]
    spacings_A = [r["spacing_A"] for r in grids if r.get("spacing_A")]
    median = sorted(spacings)[len(spacings) // 2] if spacings else None
    median_A = sorted(spacings_A)[len(spacings_A) // 2] if spacings_A else None
    figures = [("images", totals["images"], "n-images"), ("ok", totals["ok"], "n-ok"),
               ("empty", totals["empty"], "n-empty"), ("failed", totals["failed"], "n-failed"),
               ("atlases", totals["atlases"], "n-atlases"),
               ("grid-square images", totals["grid_square_images"], "n-grid"),
               ("squares", totals["squares"], "n-squares"), ("holes", totals["holes"], "n-holes")]
    dl = "".join(f'<div><dt>{_e(k)}</dt><dd id="{i}" data-count="{v}">{v}</dd></div>' for k, v, i in figures)
    if median is not None:
        text = f"{median:.1f} px" + (f" ({median_A / 1e4:.2f} µm)" if median_A else "")
        dl += f'<div><dt>median hole spacing</dt><dd id="median-spacing">{_e(text)}</dd></div>'
    status = "" if summary.get("complete", True) else '<p class="warn">Interrupted run: rerun with --resume.</p>'
    parts.append(f'<section id="summary"><h2>Summary</h2>{status}<dl class="figures">{dl}</dl></section>')

    # Atlases with squares coloured by score.
    atlas_html = []
    for a_n, r in enumerate(atlases):
        targets = results[r["id"]].get("targets", [])
        shapes = []
        for k, t in enumerate(targets):
            colour = score_colour(t.get("score"))
            n_linked = len(linked.get((r["id"], k), []))
            tip = f'square {k + 1}: score {_fmt(t.get("score"))}, {n_linked} grid-square image(s)'
            poly = (f'<polygon points="{_pts(t["vertices"])}" fill="{colour}" stroke="{colour}">'
                    f'<title>{_e(tip)}</title></polygon>')
            shapes.append(f'<a class="square" href="#sq-{a_n}-{k}" data-linked="{1 if n_linked else 0}">{poly}</a>')
        svg = _svg_image(f"images/{r['id']}.jpg", r["rows"], r["cols"], "".join(shapes), "atlas")
        atlas_html.append(f'<figure class="atlas-fig"><figcaption>{_e(r["id"])}: {len(targets)} squares '
                          f'(click one to see its grid-square images)</figcaption>{svg}</figure>')
    legend = ('<div class="legend">score <span>0</span><span class="bar"></span><span>1</span> '
              '<span class="swatch" style="background:#999999"></span> none</div>')
    explore = ['<section id="atlases"><h2>Atlases</h2>' + legend + ("".join(atlas_html) or
               '<p class="none">No atlas in this batch.</p>') + "</section>"]

    # Holes views: one per atlas square (its linked images), one per grid-square image that has no square.
    views = []
    for a_n, r in enumerate(atlases):
        for k, t in enumerate(results[r["id"]].get("targets", [])):
            figs = "".join(f'<figure><figcaption>{_e(g["id"])}: {g["count"]} holes, best {_fmt(g["best_score"])}'
                           f'</figcaption>{_holes_svg(g, results[g["id"]])}</figure>'
                           for g in linked.get((r["id"], k), []))
            figs = figs or '<p class="none">No grid-square image was taken of this square.</p>'
            views.append(f'<section class="view" id="sq-{a_n}-{k}"><h3>Square {k + 1} of {_e(r["id"])}: score '
                         f'{_fmt(t.get("score"))}, area {_fmt(t.get("area"))} px²</h3>{figs}</section>')
    for g in grids:
        if view_of(g).startswith("#img-"):
            views.append(f'<section class="view" id="img-{image_index[g["id"]]}"><h3>{_e(g["id"])}: {g["count"]} '
                         f'holes</h3><figure>{_holes_svg(g, results[g["id"]])}</figure></section>')
    explore.append('<section id="views"><h2>Holes</h2><p class="hint">Click a square or an image in the '
                   'table to show its holes here.</p>' + "".join(views) + "</section>")
    parts.append('<div class="explore">' + "".join(explore) + "</div>")

    # Histograms.
    square_scores = [t.get("score") for r in atlases for t in results[r["id"]].get("targets", [])]
    hole_scores = [t.get("score") for r in grids for t in results[r["id"]].get("targets", [])]
    parts.append('<section id="histograms"><h2>Distributions</h2>'
                 + _histogram(square_scores, "square scores", "", 0.0, 1.0)
                 + _histogram(hole_scores, "hole scores", "", 0.0, 1.0)
                 + _histogram(spacings, "hole spacing per image", "px") + "</section>")

    # Tables.
    image_rows = []
    for r in rows:
        name = (f'<a href="{view_of(r)}">{_e(r["id"])}</a>' if r["status"] != "error" and r["kind"] == "holes"
                else (f'<a href="#atlases">{_e(r["id"])}</a>' if r["kind"] == "squares" and r["status"] != "error"
                      else _e(r["id"])))
        image_rows.append([(name, r["id"]), (_e(r["kind"] or ""), r["kind"]), (_e(r["status"]), r["status"]),
                           (_fmt(r["count"]), r["count"]), (_fmt(r["best_score"]), r["best_score"]),
                           (_fmt(r["spacing_px"]), r["spacing_px"]), (_fmt(r["pixel_size_A"]), r["pixel_size_A"]),
                           (_e(r.get("reason") or r.get("error") or ""), r.get("reason") or r.get("error"))])
    square_rows = []
    for a_n, r in enumerate(atlases):
        for k, t in enumerate(results[r["id"]].get("targets", [])):
            n_linked = len(linked.get((r["id"], k), []))
            square_rows.append([(f'<a href="#sq-{a_n}-{k}">{_e(r["id"])} #{k + 1}</a>', f"{a_n:04d}-{k:06d}"),
                                (_fmt(t.get("score")), t.get("score")), (_fmt(t["x"]), t["x"]), (_fmt(t["y"]), t["y"]),
                                (_fmt(t.get("area")), t.get("area")),
                                (_fmt(t.get("brightness")), t.get("brightness")),
                                (_e(t.get("class") or ""), t.get("class")),
                                (_e(t.get("found_by") or ""), t.get("found_by")),
                                (_fmt(t.get("row")), t.get("row")), (_fmt(t.get("col")), t.get("col")),
                                (str(n_linked), n_linked)])
    parts.append('<section id="tables"><h2>Images</h2>' + _table("images-table", ["image", "kind", "status", "targets",
                 "best score", "spacing px", "pixel Å", "reason / error"], image_rows)
                 + "<h2>Squares</h2>" + _table("squares-table", ["square", "score", "x px", "y px", "area px²",
                                               "brightness", "class", "found by", "row", "col", "images"],
                                               square_rows) + "</section>")
    notes = "".join(f"<li>{_e(n)}</li>" for n in summary.get("notes", []))
    if notes:
        parts.append(f'<section id="notes"><h2>Notes</h2><ul>{notes}</ul></section>')
    return _PAGE.format(version=_e(summary.get("version", "")), body="\n".join(parts))


def write_report(outdir: str | Path, marks: Mapping[str, bytes] | None = None,
                 records: Mapping[str, dict] | None = None) -> Path:
    """Write OUTDIR/index.html (atomically) and return its path (`marks`, `records`: see render_report)."""
    from .outputs import atomic_write

    path = Path(outdir) / "index.html"
    atomic_write(path, render_report(outdir, marks, records))
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ptolemy-rt batch report</title>
<script>
// First thing on the page: every script error and console.error lands in #errors (the browser test reads it).
window.__errors = [];
window.addEventListener("error", function (e) {{ window.__errors.push(String(e.message || e)); }});
(function () {{ var orig = console.error; console.error = function () {{
  window.__errors.push(Array.prototype.join.call(arguments, " ")); return orig.apply(console, arguments); }}; }})();
</script>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; margin-top: 1.5em; }} h3 {{ font-size: 1em; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 0.5em 2em; }} .figures div {{ min-width: 7em; }}
dt {{ color: #666; font-size: 0.85em; }} dd {{ margin: 0; font-size: 1.4em; font-weight: 600; }}
svg.atlas {{ width: min(90vw, 640px); height: auto; background: #000; }}
svg.holes {{ width: min(90vw, 720px); height: auto; background: #000; }}
svg.atlas polygon {{ fill-opacity: 0.45; stroke-width: 2; vector-effect: non-scaling-stroke; }}
svg.atlas a:hover polygon, svg.atlas a:focus polygon {{ fill-opacity: 0.8; }}
svg.atlas a[data-linked="1"] polygon {{ stroke: #fff; }}
svg.atlas a.selected polygon {{ stroke: #f33; stroke-width: 4; fill-opacity: 0.8; }}
circle.hole {{ fill: none; stroke-width: 2; vector-effect: non-scaling-stroke; }}
.explore {{ display: flex; flex-wrap: wrap; gap: 1em 2em; align-items: flex-start; }}
#views {{ flex: 1 1 600px; }}
section.view {{ display: none; border: 1px solid #ccc; padding: 0.5em 1em; }}
section.view:target {{ display: block; }}
figure {{ margin: 0.5em 0; display: inline-block; vertical-align: top; }}
.hist svg {{ width: 320px; height: 140px; }} .hist rect {{ fill: #3b6fb6; }}
.hist line {{ stroke: #444; }} .hist text {{ font-size: 10px; fill: #444; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; }}
th {{ cursor: pointer; background: #f4f4f4; user-select: none; }}
th.asc::after {{ content: " \\25B2"; }} th.desc::after {{ content: " \\25BC"; }}
.legend .bar {{ display: inline-block; width: 120px; height: 10px; vertical-align: middle;
  background: linear-gradient(to right, #440154, #3b528b, #21918c, #5ec962, #fde725); }}
.legend .swatch {{ display: inline-block; width: 10px; height: 10px; }}
.none, .hint {{ color: #777; }} .warn {{ color: #a40; font-weight: 600; }}
#errors:empty {{ display: none; }} #errors {{ color: #b00; }}
</style></head>
<body>
<h1>ptolemy-rt batch report</h1>
<ul id="errors"></ul>
{body}
<pre id="selftest" hidden></pre>
<footer><p class="hint">ptolemy-rt {version}. Static page: the images are in images/, the results in results/,
one row per image in summary.csv and summary.json.</p></footer>
<script>
(function () {{
  function sortBy(th) {{
    var table = th.closest("table"), col = +th.dataset.col, asc = !th.classList.contains("asc");
    table.querySelectorAll("th").forEach(function (h) {{ h.classList.remove("asc", "desc"); }});
    th.classList.add(asc ? "asc" : "desc");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {{
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
      var c = (isFinite(nx) && isFinite(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    }});
    rows.forEach(function (r) {{ body.appendChild(r); }});
  }}
  document.querySelectorAll("table.sortable th").forEach(function (th) {{
    th.addEventListener("click", function () {{ sortBy(th); }});
  }});
  function showErrors() {{
    var list = document.getElementById("errors");
    list.textContent = "";
    window.__errors.forEach(function (m) {{ var li = document.createElement("li"); li.textContent = m;
      list.appendChild(li); }});
  }}
  function markSelected() {{
    document.querySelectorAll("a.square.selected").forEach(function (a) {{ a.classList.remove("selected"); }});
    var a = location.hash && document.querySelector('a.square[href="' + location.hash + '"]');
    if (a) a.classList.add("selected");
  }}
  window.addEventListener("hashchange", markSelected);
  window.addEventListener("load", function () {{
    markSelected();
    showErrors();
    if (location.search.indexOf("selftest") < 0) return;
    var out = document.getElementById("selftest");
    var res = {{ squares_shown: +document.getElementById("n-squares").dataset.count,
                square_links: document.querySelectorAll("a.square").length }};
    // Sorting: a click on the images table's "targets" header puts the smallest count first.
    var th = document.querySelector('#images-table th[data-col="3"]');
    th.dispatchEvent(new MouseEvent("click", {{ bubbles: true }}));
    var counts = Array.prototype.map.call(document.querySelectorAll("#images-table tbody tr"), function (r) {{
      return parseFloat(r.cells[3].dataset.v); }}).filter(function (v) {{ return isFinite(v); }});
    res.sorted = counts.every(function (v, i) {{ return i === 0 || counts[i - 1] <= v; }}) && counts.length > 0;
    var link = document.querySelector('a.square[data-linked="1"]');
    if (!link) {{ res.clicked = null; out.textContent = JSON.stringify(res); return; }}
    res.clicked = link.getAttribute("href");
    link.dispatchEvent(new MouseEvent("click", {{ bubbles: true, cancelable: true, view: window }}));
    setTimeout(function () {{
      var view = document.getElementById(res.clicked.slice(1));
      res.hash = location.hash;
      res.visible = !!view && getComputedStyle(view).display !== "none";
      res.holes = view ? view.querySelectorAll("circle.hole").length : 0;
      // Every picture the page refers to must load from beside the page.
      var hrefs = {{}};
      document.querySelectorAll("svg image").forEach(function (i) {{ hrefs[i.getAttribute("href")] = 1; }});
      var names = Object.keys(hrefs), pending = names.length;
      res.images = pending; res.images_failed = [];
      function finish() {{ showErrors(); res.errors = window.__errors.slice(); out.textContent = JSON.stringify(res); }}
      if (!pending) finish();
      names.forEach(function (name) {{
        var img = new Image();
        img.onload = function () {{ if (--pending === 0) finish(); }};
        img.onerror = function () {{ res.images_failed.push(name); if (--pending === 0) finish(); }};
        img.src = name;
      }});
    }}, 200);
  }});
}})();
</script>
</body></html>
"""
