"""Generator classes for files as other programs leave them: text sidecars in the encodings editors save
(text_encodings), and output folders shared by two batches at once (batch_races).

- text_encodings: a SerialEM .mdoc, an EPU .xml and a .nav (alone, or in a SerialEM session folder for `batch`)
  saved with a UTF-8 byte-order mark, as UTF-16 or UTF-32 with a mark (Windows editors' "Unicode"), with CRLF or
  CR line ends, a Latin-1 note, trailing NULs, a line of megabytes, or as UTF-16 without a mark. Where the text is
  decodable (a mark names its encoding) the pixel size must be the one written (`expect_json`), the navigator
  read and its copy written; a navigator in UTF-16/32 is refused (2) with one line naming it; the rest may be
  refused (2) or read without the pixel size (0), never 70.
- batch_races: two `batch` processes started together on one output folder (the second with --resume at times):
  both exit 0, no temporary file left, a readable summary.json, and every result the bytes of a lone run; a batch
  whose session changes under it (0 or 2); --resume after an earlier run whose outputs became FIFOs, links to
  /dev/zero or folders (0 or 4, never a hang); a batch whose terminal hangs up (SIGHUP to its process group: 130, no
  temporary file, a readable summary; -1 when it came before Python started the package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FILE_CLASSES = ("text_encodings", "batch_races")


def _pick(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


# ---------------------------------------------------------------------------------------------- text encodings

# (name, decodable): decodable variants must read exactly as the plain text does.
VARIANTS = [("plain", True), ("bom8", True), ("utf16le", True), ("utf16be", True), ("utf32", True),
            ("crlf", True), ("bom8_crlf", True), ("cr", True), ("latin1_note", True), ("long_line", True),
            ("cp1252", True),
            ("nuls", False), ("utf16_no_bom", False), ("bom_twice", False)]


# A navigator is written back byte for byte: one in UTF-16/32 is refused (by --nav and by batch discovery).
NAV_REFUSED = ("utf16le", "utf16be", "utf32")


def _encode(text: str, variant: str) -> bytes:
    """`text` (lines ending in '\\n') as `variant` saves it."""
    if variant == "crlf":
        return text.replace("\n", "\r\n").encode()
    if variant == "bom8_crlf":
        return b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode()
    if variant == "cr":
        return text.replace("\n", "\r").encode()
    if variant == "bom8":
        return b"\xef\xbb\xbf" + text.encode()
    if variant == "bom_twice":
        return b"\xef\xbb\xbf\xef\xbb\xbf" + text.encode()
    if variant == "utf16le":
        return "\ufeff".encode("utf-16-le") + text.encode("utf-16-le")
    if variant == "utf16be":
        return "\ufeff".encode("utf-16-be") + text.encode("utf-16-be")
    if variant == "utf32":
        return text.encode("utf-32")  # with its mark, in the machine's order
    if variant == "cp1252":  # the Windows code page, as SerialEM writes names with accents
        return text.encode("cp1252", "replace")
    if variant == "utf16_no_bom":
        return text.encode("utf-16-le")
    if variant == "nuls":
        return text.encode() + b"\0" * 64
    if variant == "latin1_note":
        return text.encode() + "Note = caf\xe9 gr\xfcn \xb5m\n".encode("latin-1")
    if variant == "long_line":
        return text.encode() + b"Note = " + b"x" * (3 << 20) + b"\n"
    return text.encode()


def _mdoc(pixel_A: float, magnification: int) -> str:
    # SerialEM writes the file-level keys first: a mark then sits on 'PixelSpacing'
    return (f"PixelSpacing = {pixel_A!r}\nImageFile = map.mrc\nImageSize = 320 320\nDataMode = 2\n\n"
            "[T = SerialEM: Digitized on Krios]\n\n"
            f"[ZValue = 0]\nMagnification = {magnification}\nTiltAngle = 0\nPixelSpacing = {pixel_A!r}\n")


def _nav(map_file: str) -> str:
    return ("AdocVersion = 2.00\nLastSavedAs = C:\\data\\s.nav\n\n[Item = 1]\nColor = 2\nStageXYZ = 10 -20 0\n"
            "NumPts = 5\nRegis = 1\nType = 2\nMapFile = " + map_file + "\nMapID = 100001\nMapMontage = 0\n"
            "MapSection = 0\nMapScaleMat = 2 0 0 -2\nMapWidthHeight = 320 320\n\n")


def _xml(metres: float, encoding: str = "utf-8") -> str:
    return (f'<?xml version="1.0" encoding="{encoding}"?>\n'
            '<MicroscopeImage xmlns="http://schemas.datacontract.org/2004/07/Fei.SharedObjects">\n'
            f"<SpatialScale><pixelSize><x><numericValue>{metres!r}</numericValue></x>\n"
            f"<y><numericValue>{metres!r}</numericValue></y></pixelSize></SpatialScale>\n"
            "<ReadoutArea><width>320</width><height>320</height></ReadoutArea>\n</MicroscopeImage>\n")


def text_encodings(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """One sidecar (.mdoc, EPU .xml, .nav, or a whole SerialEM session's .mdoc and .nav) in one encoding."""
    from .surfaces import _main

    out = d / "out"
    out.mkdir()
    variant, decodable = _pick(rng, VARIANTS)
    where = _pick(rng, ["mdoc", "mdoc", "xml", "nav", "nav", "session"])
    pixel_A = float(_pick(rng, [12.5, 45.2, 250.5, 1234.0]))
    img = d / "map.mrc"
    img.write_bytes(image.read_bytes())
    result = out / "r.json"
    if where == "mdoc":
        (d / _pick(rng, ["map.mrc.mdoc", "map.mdoc"])).write_bytes(_encode(_mdoc(pixel_A, 135), variant))
        checks = [[str(result), ["image", "pixel_size_A"], pixel_A]] if decodable else []
        return _main(["squares", img, "--no-score", "-o", result], {0}, out, rerun=[str(result)],
                     expect_json=checks)
    if where == "xml":
        # expat reads a mark and UTF-16 itself, where the declaration says the same (a UTF-16 file declared
        # "utf-8" is refused: a warning, no pixel size); no Latin-1 note or line of megabytes in an XML
        xml_variant = variant if variant not in ("latin1_note", "long_line") else "plain"
        declared = {"utf16le": "utf-16", "utf16be": "utf-16", "utf32": "utf-32"}.get(xml_variant, "utf-8")
        honest = rng.random() < 0.8
        text = _xml(pixel_A * 1e-10, declared if honest else "utf-8")
        dtd = rng.random() < 0.2  # the pixel size behind an entity: a DTD is refused in every encoding
        if dtd:
            text = text.replace("?>\n", f'?>\n<!DOCTYPE MicroscopeImage [<!ENTITY px "{pixel_A * 1e-10!r}">]>\n', 1)
            text = text.replace(f">{pixel_A * 1e-10!r}</numericValue>", ">&px;</numericValue>")
        (d / "map.xml").write_bytes(_encode(text, xml_variant))
        expat = decodable and honest and xml_variant != "utf32"  # expat has no UTF-32 (nor has any EPU file)
        checks = [[str(result), ["image", "pixel_size_A"], None if dtd else pixel_A]] if expat or dtd else []
        return _main(["squares", img, "--no-score", "-o", result], {0}, out, rerun=[str(result)],
                     expect_json=checks)
    # a map named with accents: its MapFile in the navigator's encoding (UTF-8 or cp1252 bytes; 0x85 in 'Å')
    name = _pick(rng, ["map.mrc", "carte_\u00e9.mrc", "\u00c5tlas.mrc", "\u0441\u0435\u0442\u043a\u0430_\u0445.mrc"])
    if variant == "cp1252" and not name.isascii() and name.encode("cp1252", "replace").count(b"?"):
        name = "map.mrc"
    if where == "nav":
        img = d / name
        img.write_bytes(image.read_bytes())
        nav = d / "s.nav"
        nav.write_bytes(_encode(_nav("C:\\data\\" + name), variant))
        copy = out / "s_ptolemy.nav"
        argv = ["squares", img, "--no-score", "-o", result, "--nav", nav, "--nav-out", copy]
        if variant in NAV_REFUSED:
            expect = {2}  # a navigator is written back byte for byte: one in UTF-16/32 is refused, named
        elif variant in ("nuls", "bom_twice", "utf16_no_bom"):
            expect = {0, 2}
        else:
            expect = {0}
        return _main(argv, expect, out, rerun=[str(copy)], together=[str(result), str(copy)],
                     names=str(nav) if expect == {2} else None)
    session = d / "session"
    session.mkdir()
    (session / name).write_bytes(image.read_bytes())
    mdoc_variant = _pick(rng, [variant, "plain"])
    nav_variant = variant if mdoc_variant == "plain" else _pick(rng, [variant, "plain"])
    if nav_variant != variant and name != "map.mrc" and variant == "cp1252":
        nav_variant = variant  # (the name was chosen for a cp1252 navigator)
    (session / (name + ".mdoc")).write_bytes(_encode(_mdoc(pixel_A, 135), mdoc_variant))
    (session / "s.nav").write_bytes(_encode(_nav("C:\\data\\" + name), nav_variant))
    batch = out / "b"
    argv = ["batch", session, "-o", batch, "--workers", "1", "--threads", "1", "--no-progress", "--no-report"]
    ok = dict(VARIANTS)[mdoc_variant] and dict(VARIANTS)[nav_variant] and nav_variant not in NAV_REFUSED
    if nav_variant in NAV_REFUSED:  # the session's navigator lists its images: refused, named, the batch is
        return _main(argv, {2}, out, names=str(session / "s.nav"))
    # the map found through the navigator: its stage position (10, -20 µm) from the map item's frame
    checks = [[str(batch / "summary.json"), ["images", 0, "pixel_size_A"], pixel_A],
              [str(batch / "summary.json"), ["images", 0, "stage_xy_m"], [1e-5, -2e-5]]] if ok else []
    return _main(argv, {0} if ok else {0, 2}, out, batch_out=str(batch), expect_json=checks)


# ---------------------------------------------------------------------------------------------- batch races

MUTATIONS = ["unlink", "truncate", "garbage", "dir", "fifo", "loop", "grow", "new"]


def batch_races(rng: np.random.Generator, d: Path, image: Path) -> dict:
    """Two batches at once on one output folder, over the same session: each must finish as a lone run would.
    Or one batch whose session changes under it (images removed, cut, replaced by a folder, a FIFO or a link
    loop, added): 0 or 2, never 70 nor a hang, a readable summary, no temporary file."""
    session = d / "session"
    session.mkdir()
    n = int(rng.integers(1, 5))
    for k in range(n):
        (session / f"atlas_{k}.mrc").write_bytes(image.read_bytes())
    out = d / "out"
    out.mkdir()
    batch = out / "b"
    argv = ["batch", str(session), "-o", str(batch), "--kind", "squares", "--no-progress", "--threads", "1",
            "--workers", _pick(rng, ["1", "1", "2"])]
    if rng.random() < 0.4:
        argv.append("--no-report")
    if rng.random() < 0.3:
        argv.append("--resume")
    kind = rng.random()
    if kind < 0.15:  # --resume after an earlier run whose outputs became special files: never read, never a hang
        from .surfaces import _main

        where = [_pick(rng, [".state/*.json", "results/*.json", "images/*.jpg", "summary.json"])
                 for _ in range(int(rng.integers(1, 3)))]
        edits = [{"glob": str(batch / w), "special": _pick(rng, ["fifo", "zero", "dir"])} for w in where]
        lone = ["batch", str(session), "-o", str(batch), "--kind", "squares", "--no-progress", "--threads", "1",
                "--workers", "1"]
        return _main([*lone, "--resume"], {0, 4}, out, before=lone, tamper=edits, batch_out=str(batch))
    if kind < 0.35:  # the terminal or ssh session goes: SIGHUP to the whole group, workers included
        for k in range(n, n + 30):  # enough images that the hangup comes mid-batch
            (session / f"atlas_{k}.mrc").write_bytes(image.read_bytes())
        return {"kind": "cli", "argv": argv, "expect": [0, 130, -1], "outdir": str(out), "batch_out": str(batch),
                "signal": "SIGHUP", "group": True, "delay": float(rng.uniform(0.2, 2.0)),
                "early": [-1], "started": str(batch)}
    if kind < 0.6:
        targets = [str(session / f"atlas_{k}.mrc") for k in range(n)]
        changes = [{"op": _pick(rng, MUTATIONS), "path": _pick(rng, targets)}
                   for _ in range(int(rng.integers(1, 4)))]
        return {"kind": "cli", "argv": argv, "expect": [0, 2], "outdir": str(out), "batch_out": str(batch),
                "mutate": changes, "delay": float(rng.uniform(0.3, 3.0)), "image": str(image)}
    lone = out / "lone"
    names = ["summary.json"] + [f"results/atlas_{k}.mrc.json" for k in range(len(list(session.iterdir())))]
    return {"kind": "cli", "argv": argv, "expect": [0], "outdir": str(out), "writers": 2,
            "batch_out": str(batch), "lone": [str(lone) if a == str(batch) else a for a in argv],
            "same_files": [[str(batch / n), str(lone / n)] for n in names]}
