"""Overlay images and the per-study report (self-contained HTML, and PDF when reportlab is installed).

Overlays follow the axis convention of ``docs/architecture.md``: arrays are (X, Y[, Z]) with X = columns, so a
2D slice is transposed (``.T``) before it becomes a PNG. Colours are fixed per finding type so the same kind of
finding looks the same in every report.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re

import numpy as np

from cadpipe.pipelines.outputs.files import atomic_write_bytes, atomic_writer_path
from cadpipe.pipelines.outputs.findings import row_calls
from cadpipe.pipelines.outputs.patient_header import patient_lines, technical_lines, view_text

__all__ = ["overlay_png", "write_study_report", "NOT_FOR_CLINICAL_USE", "FINDING_COLOURS"]

NOT_FOR_CLINICAL_USE = "Research software. Not for clinical use. Results must not be used for diagnosis."
FINDING_COLOURS = {  # RGB per finding type
    "heatmap": (255, 64, 0),
    "mask": (255, 0, 0),
    "mask2": (0, 200, 255),
    "mask3": (255, 220, 0),
    "box": (0, 255, 0),
    "box_malignant": (255, 0, 255),
}


def _gray_u8(img: np.ndarray) -> np.ndarray:
    img = np.nan_to_num(np.asarray(img, dtype=np.float32))
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((img - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _hot(v: np.ndarray) -> np.ndarray:
    """A small 'jet'-like colour map for heatmaps in [0, 1] → (..., 3) uint8."""
    v = np.clip(v, 0, 1)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def pick_slice(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A 2D (X, Y) view of a 2D or 3D array: the slice (last axis) with most mask, else the middle."""
    if image.ndim == 2:
        return image, mask
    if mask is not None and mask.shape == image.shape and mask.any():
        k = int(np.argmax((mask > 0).reshape(-1, mask.shape[-1]).sum(0)))
    else:
        k = image.shape[-1] // 2
    return image[..., k], (mask[..., k] if mask is not None and mask.shape == image.shape else None)


HEATMAP_ALPHA = 0.55  # opacity of the heat map's colour at the highest value (0 at the lowest)


def heatmap_stops(n: int = 5, grey: int = 128) -> list[tuple[float, tuple[int, int, int]]]:
    """``[(value, (r, g, b))]`` of the heat-map colour scale at ``n`` evenly spaced values in [0, 1], as
    :func:`overlay_png` paints them over a mid-grey pixel (``grey``): the report's colour bar is drawn from these,
    so it shows what the overlay shows."""
    values = np.linspace(0.0, 1.0, n)
    colours = _hot(values).astype(np.float32)
    alpha = HEATMAP_ALPHA * values[:, None]
    blended = grey * (1 - alpha) + colours * alpha
    return [(float(v), tuple(int(round(c)) for c in rgb)) for v, rgb in zip(values, blended)]


def _prepare(image: np.ndarray, mask: np.ndarray | None, heatmap: np.ndarray | None):
    """A 2D (X, Y) image (channel axis dropped, the slice with most mask for a volume), its mask slice, the
    heat map slice resized to the image, and the ``(3, X, Y)`` colour image when the input is RGB (else None)."""
    image = np.asarray(image, dtype=np.float32)
    colour = None
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[0] < min(image.shape[1:]):
        colour = image if image.shape[0] == 3 else None  # channel-first 2D: RGB kept for the picture
        image = image.mean(0)
    image, mask = pick_slice(image, mask)
    hm = None
    if heatmap is not None:
        hm = np.asarray(heatmap, dtype=np.float32)
        if hm.ndim == 3:
            hm = hm[..., hm.shape[-1] // 2]
        if hm.shape != image.shape:
            import torch

            hm = torch.nn.functional.interpolate(torch.as_tensor(hm)[None, None], size=image.shape,
                                                 mode="bilinear", align_corners=False)[0, 0].numpy()
    return image, mask, hm, colour


def overlay_png(image: np.ndarray, heatmap: np.ndarray | None = None, mask: np.ndarray | None = None,
                boxes: list[dict] | None = None, path: str | None = None, durable: bool = True,
                mirror: bool = False, plain_path: str | None = None) -> bytes:
    """Render an image (X, Y[, Z], grey; or (3, X, Y), colour) with a heatmap, label mask and/or boxes; returns PNG
    bytes (and writes
    them atomically to ``path`` when given; ``durable=False``: no fsync, see ``files.atomic_write_bytes``).

    The picture keeps the image's own pixel grid (a heat map is resized onto it), so it has the source's size and
    aspect ratio. Boxes are dicts with ``box`` (xyxy in (X, Y) pixels), ``label``, ``score``. ``mirror``: flip left
    to right (image, mask, heat map and boxes; the box numbers stay readable), e.g. to hang a mammogram as read.
    ``plain_path``: also write the image alone there (the same slice, as acquired: not mirrored), for the report to
    show beside the overlay. PNGs use zlib level 1 (about 4x faster to encode than PIL's default 6, files ~25% larger).
    """
    from PIL import Image, ImageDraw

    image, mask, hm, colour = _prepare(image, mask, heatmap)
    if colour is not None:  # (3, X, Y) → (rows, cols, 3), one intensity window for the three channels
        base = _gray_u8(np.moveaxis(colour, 0, -1).transpose(1, 0, 2))
    else:
        base = np.repeat(_gray_u8(image.T)[..., None], 3, axis=-1)
    if plain_path:  # as acquired: never mirrored
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(base)).save(buf, format="PNG", compress_level=1)
        atomic_write_bytes(plain_path, buf.getvalue(), durable)
    if mirror:
        base = base[:, ::-1]
    rgb = base.astype(np.float32)
    if hm is not None:
        hm = (hm - hm.min()) / (np.ptp(hm) + 1e-8)
        hm_t = hm.T[:, ::-1] if mirror else hm.T
        alpha = HEATMAP_ALPHA * hm_t[..., None]
        rgb = rgb * (1 - alpha) + _hot(hm_t).astype(np.float32) * alpha
    if mask is not None:
        m = np.asarray(mask).T
        m = m[:, ::-1] if mirror else m
        for lab in [v for v in np.unique(m) if v > 0]:
            colour = np.array(FINDING_COLOURS.get("mask" if lab == 1 else f"mask{int(lab)}", (255, 0, 0)), float)
            sel = m == lab
            rgb[sel] = rgb[sel] * 0.5 + colour * 0.5
    pil = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if boxes:
        draw = ImageDraw.Draw(pil)
        width = pil.size[0]
        for b in boxes:
            x0, y0, x1, y1 = (float(v) for v in b["box"])
            if mirror:
                x0, x1 = width - 1 - x1, width - 1 - x0
            colour = FINDING_COLOURS["box_malignant" if b.get("malignancy", 0) >= 0.5 else "box"]
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(1, int(min(pil.size) / 200)))
            text = str(b["n"]) if "n" in b else f"{b.get('label', '')} {b.get('score', 0):.2f}"
            draw.text((x0 + 2, y0 + 2), text, fill=colour, font_size=max(10, int(min(pil.size) / 40)))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)
    data = buf.getvalue()
    if path:
        atomic_write_bytes(path, data, durable)
    return data


SCREEN_LONG_SIDE_PX = 512  # each picture's long side on screen; a click shows it at full resolution


def _png_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def _colour_scale_html() -> str:
    stops = ", ".join(f"rgb{c} {100 * v:.0f}%" for v, c in heatmap_stops())
    return ("<div class='scale' role='img' aria-label='colour scale from blue (little evidence) to red (most "
            f"evidence)'><div class='bar' style='background:linear-gradient(to right, {stops})'></div>"
            "<div class='ends'><span>least evidence in this image</span><span>most evidence</span></div></div>")


def _figure(path: str, caption: str, fig_id: str, heatmap: bool = False) -> str:
    """One picture, its long side :data:`SCREEN_LONG_SIDE_PX` on screen in its own aspect ratio; clicking it shows
    it at full resolution (a CSS toggle: the report stays one file without scripts). Heat maps get a colour bar."""
    with open(path, "rb") as f:
        b64 = base64.b64encode(f.read()).decode("ascii")
    w, h = _png_size(path)
    size = f"width:{SCREEN_LONG_SIDE_PX}px;height:auto" if w >= h else f"height:{SCREEN_LONG_SIDE_PX}px;width:auto"
    cap = html.escape(caption or os.path.basename(path))
    scale = " " + _colour_scale_html() if heatmap else ""
    return (f"<figure><input type='checkbox' class='zoom' id='{fig_id}'><label for='{fig_id}' title='click: full "
            f"resolution ({w}x{h} px) / back'><img alt=\"{cap}\" src=\"data:image/png;base64,{b64}\" "
            f"style='{size}'></label><figcaption>{cap}{scale}</figcaption></figure>")


_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def _is_uid(text: str) -> bool:
    return bool(_UID.match(str(text or "")))


def _source_name(row: dict) -> str:
    """The input's file name (with the series id when that is not a UID)."""
    name = os.path.basename(str(row.get("input_paths", "")).split(";")[0])
    series = str(row.get("series_id", ""))
    if series and not _is_uid(series) and series not in name:
        return f"{series} — {name}" if name else series
    return name


def _unit_title(index: int, row: dict) -> str:
    """``"Image 2: Left CC"``: the view when the header gives one, never a raw file name (that is printed under
    the heading, see :func:`_source_name`)."""
    view = view_text(row.get("_patient") or {})
    return f"Image {index}: {view}" if view else f"Image {index}"


def _probability_block(row: dict, e) -> tuple[str, list[str]]:
    """The probability table of a classification row (HTML) and its lines for the PDF, from
    :func:`~cadpipe.pipelines.outputs.findings.row_calls`: the calls and printed numbers the findings and
    captions use. Multi-label: the classes that are not findings go into a collapsed table (``<details>``)."""
    calls = row_calls(row)
    if not calls:
        return "", []
    with_thr = any(c["threshold"] is not None for c in calls)
    listed = bool((row.get("_call_words") or {}).get("positives_are_findings"))  # shown as findings already

    def cell(c: dict) -> str:
        if c["threshold"] is None:
            return "<td>—</td><td>—</td>" if with_thr else ""
        call = c["word"]
        note = f" ({c['note']})" if c["note"] else ""
        return f"<td>{c['shown_threshold']}</td><td>{e(c['relation'])}: {e(call)}{e(note)}</td>"

    def table(rows: list[dict]) -> str:
        head = "<tr><th>Class</th><th>Probability</th>" + (
            "<th>Operating threshold</th><th>Call</th>" if with_thr else "") + "</tr>"
        body = "".join(f"<tr><td>{e(c['name'].replace('_', ' '))}</td><td>{c['shown_probability']}</td>{cell(c)}</tr>"
                       for c in rows)
        return f"<table>{head}{body}</table>"

    def line(c: dict) -> str:
        text = f"{c['name'].replace('_', ' ')} {c['shown_probability']}"
        if c["threshold"] is not None:
            text += f" ({c['relation']} threshold {c['shown_threshold']})"
        return text

    if listed:
        rest = [c for c in calls if c["call"] != "positive"]
        if not rest:
            return "", []
        return (f"<details><summary>Other classes, not reported as findings ({len(rest)})</summary>{table(rest)}"
                "</details>", ["Other classes: " + ", ".join(line(c) for c in rest)])
    return table(calls), ["Probabilities: " + ", ".join(line(c) for c in calls)]


_MAMMO_ORDER = [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]


def _mammo_position(row: dict) -> tuple[str, str] | None:
    info = row.get("_patient") or {}
    side = str(info.get("ImageLaterality", "") or info.get("Laterality", "") or "").strip().upper()[:1]
    view = str(info.get("ViewPosition", "") or "").strip().upper()
    return (side, view) if (side, view) in _MAMMO_ORDER else None


def _mammo_grid(rows: list[dict], out_dir: str, e) -> str:
    """The views of a mammography study hung as read: a CC row and an MLO row, right breast on the left of the
    screen and left breast on the right, back to back (scoring mirrors the pictures so the chest walls meet in the
    middle). Empty when the study has fewer than two such views."""
    placed: dict[tuple[str, str], tuple[int, str]] = {}
    for index, row in enumerate(rows, start=1):
        pos = _mammo_position(row)
        overlays = list(row.get("_outputs", {}).get("overlays", []))
        if pos and pos not in placed and overlays and os.path.isfile(os.path.join(out_dir, overlays[0])):
            placed[pos] = (index, os.path.join(out_dir, overlays[0]))
    if len(placed) < 2:
        return ""
    cells = []
    for side, view in _MAMMO_ORDER:
        label = f"{'Right' if side == 'R' else 'Left'} {view}"
        if (side, view) in placed:
            index, path = placed[(side, view)]
            cells.append(_figure(path, f"{label} (image {index}, its findings below)", f"view{index}").replace(
                "<figure>", "<figure class='view'>", 1))
        else:
            cells.append(f"<figure class='view'><p>{e(label)}: not in this study</p></figure>")
    return ("<h2>Views as read</h2><p class='note'>Right breast on the left, left breast on the right, back to back "
            "(chest walls in the middle); CC above, MLO below. Numbered boxes as listed in each image's findings.</p>"
            f"<div class='hang'>{''.join(cells)}</div>")


def write_study_report(study_dir: str, study_id: str, rows: list[dict], patient: dict, bundle: dict,
                       out_dir: str, notice: str = "") -> list[str]:
    """Write ``<study_dir>/report.html`` (self-contained: images inlined as base64) and ``report.pdf`` when
    reportlab is installed. Returns the written paths.

    ``rows`` are the journal rows of the study's units: ``_findings`` (sentences, see
    :mod:`cadpipe.pipelines.outputs.findings`), ``_outputs`` (``overlays``: image paths relative to ``out_dir``),
    ``_captions`` (one per overlay), ``_thresholds`` (class → operating threshold) and ``_patient`` (the unit's
    DICOM identifiers, for its view and UIDs). The header shows ``patient`` in human form
    (:mod:`cadpipe.pipelines.outputs.patient_header`); UIDs only appear under "Technical details". ``notice``: a
    line printed in a box under the header (the demo says its images are synthetic).
    """
    e = html.escape
    ident = patient_lines(patient)
    views = {view_text(r.get("_patient") or {}) for r in rows}
    if len(rows) > 1 and len(views) > 1:  # the study's first image's view is not the study's
        ident = [(k, v) for k, v in ident if k != "View"]
    if study_id and not _is_uid(study_id) and not any(k == "Study" for k, _ in ident):
        ident.append(("Study", str(study_id)))
    model = f"{bundle['name']} version {bundle['version']}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cadpipe report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 8px}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:3px 6px;text-align:left}.warn{background:#fee;border:2px solid #c00;"
        "padding:8px;font-weight:bold}figure{display:inline-block;vertical-align:top;margin:6px;max-width:100%;"
        "overflow:auto}figcaption{font-size:90%;max-width:512px}.tech{font-size:80%;color:#444}"
        "summary{cursor:pointer}.zoom{display:none}label img{cursor:zoom-in;background:#000;display:block;"
        "max-width:none}.zoom:checked+label img{width:auto!important;height:auto!important;cursor:zoom-out}"
        ".scale .bar{height:12px;width:100%;max-width:512px;border:1px solid #666}.scale .ends{display:flex;"
        "justify-content:space-between;max-width:512px;font-size:85%}.source{color:#555;font-size:85%;margin-top:0}"
        ".hang{display:grid;grid-template-columns:auto auto;justify-content:center;gap:4px}"
        ".hang figure{margin:0}.hang figure:nth-child(odd){justify-self:end}.note{font-size:90%}"
        "</style></head><body>",
        f"<p class='warn'>{e(NOT_FOR_CLINICAL_USE)}</p>",
        "<h1>Computer-aided analysis report</h1><table>",
        *[f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in ident],
        f"<tr><th>Analysis</th><td>{e(model)}</td></tr></table>",
    ]
    if notice:
        parts.append(f"<p class='warn'>{e(notice)}</p>")
    pdf_items: list[tuple[str, list[str], list[tuple[str, str, bool]]]] = []
    grid = _mammo_grid(rows, out_dir, e)
    parts.append(grid)
    for index, row in enumerate(rows, start=1):
        title = _unit_title(index, row)
        parts.append(f"<h2>{e(title)}</h2>")
        source = _source_name(row)
        if source:
            parts.append(f"<p class='source'>File: {e(source)}</p>")
        pdf_lines: list[str] = [f"File: {source}"] if source else []
        if row.get("status") != "ok":
            lines = [f"Could not be analysed: {row.get('error')}"]
        else:
            lines = [f["text"] for f in row.get("_findings", [])] or ["No findings."]
        parts.append("<ul>" + "".join(f"<li>{e(t)}</li>" for t in lines) + "</ul>")
        extra: list[str] = []
        if row.get("status") == "ok":
            block, extra = _probability_block(row, e)
            parts.append(block)
        outputs = row.get("_outputs", {})
        overlays = list(outputs.get("overlays", []))
        captions = list(row.get("_captions") or [])
        images = [(os.path.join(out_dir, p), captions[i] if i < len(captions) else "",
                   "heatmap" in os.path.basename(p)) for i, p in enumerate(overlays)]
        plain = os.path.join(out_dir, outputs["image"]) if outputs.get("image") else ""
        if plain and os.path.isfile(plain):
            images.insert(0, (plain, "The image as acquired, without overlay", False))
        images = [(p, c, h) for p, c, h in images if os.path.isfile(p)]
        hung = os.path.join(out_dir, overlays[0]) if grid and _mammo_position(row) and overlays else None
        shown = [im for im in images if im[0] != hung]  # the overlay hanging in the grid above is not repeated
        parts.append("<div class='pair'>" + "".join(_figure(p, c, f"img{index}_{k}", h)
                                                      for k, (p, c, h) in enumerate(shown)) + "</div>")
        pdf_items.append((title, pdf_lines + lines + extra, images))
    tech = [("Model", f"{model}, weights sha256 {bundle.get('model_sha256', '')}")]
    tech += technical_lines(patient)
    if study_id and _is_uid(study_id) and study_id != patient.get("StudyInstanceUID"):
        tech.append(("Study", str(study_id)))
    for index, row in enumerate(rows, start=1):
        for label, value in technical_lines(row.get("_patient") or {}):
            if label != "Study Instance UID" and (label, value) not in tech:
                tech.append((f"Image {index}: {label}", value))
    parts.append("<details class='tech'><summary>Technical details</summary><table>"
                 + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in tech) + "</table></details>")
    parts.append(f"<p class='warn'>{e(NOT_FOR_CLINICAL_USE)}</p><p><small>Generated by cadpipe.</small></p>"
                 "</body></html>")
    html_path = os.path.join(study_dir, "report.html")
    atomic_write_bytes(html_path, "\n".join(parts).encode("utf-8"))
    written = [html_path]
    try:
        written.append(_write_pdf(os.path.join(study_dir, "report.pdf"), ident + [("Analysis", model)], tech,
                                  pdf_items, notice))
    except ImportError:
        pass
    return written


PDF_IMAGE_MAX_PX = 1024  # the PDF draws each image in a 255 x 300 pt box (3.5 x 4.2 in): 1024 px is ~250 dpi


def _pdf_image(path: str):
    """The overlay PNG for the PDF, its long side cut to ``PDF_IMAGE_MAX_PX`` (a 2048x1536 histology overlay
    embedded whole cost ~2.5 s of encoding for a 3-inch picture; report.html keeps the full image)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if max(img.size) > PDF_IMAGE_MAX_PX:
            img.thumbnail((PDF_IMAGE_MAX_PX, PDF_IMAGE_MAX_PX), Image.Resampling.LANCZOS)
        return img.copy()


def _write_pdf(path: str, ident, tech, items, notice: str = "") -> str:
    """The PDF twin of report.html: the same lines, and the pictures two per row (each in a 255 x 300 pt box, in
    its own aspect ratio; 3.5 x 4.2 inches), captions wrapped under them, a colour
    bar under each heat map."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader, simpleSplit
    from reportlab.pdfgen import canvas

    tmp = atomic_writer_path(path)
    c = canvas.Canvas(tmp, pagesize=A4)
    width, height = A4
    margin, col_w, box_h = 40, 255, 300
    y = height - 40

    def new_page_if(needed: float) -> None:
        nonlocal y
        if y - needed < 40:
            c.showPage()
            y = height - 40

    def line(text: str, size: int = 10, bold: bool = False, x: float = margin, w: float = width - 2 * margin):
        nonlocal y
        font = "Helvetica-Bold" if bold else "Helvetica"
        for part in simpleSplit(text, font, size, w) or [""]:
            new_page_if(size + 4)
            c.setFont(font, size)
            c.drawString(x, y, part)
            y -= size + 4

    def picture(img: str, caption: str, heat: bool, x: float, top: float) -> float:
        """Draw one picture with its caption in the column at ``x``; returns the lowest y used."""
        c.drawImage(ImageReader(_pdf_image(img)), x, top - box_h, width=col_w, height=box_h,
                    preserveAspectRatio=True, anchor="n")
        yy = top - box_h - 4
        if heat:
            stops = heatmap_stops(32)
            seg = col_w / len(stops)
            for i, (_, rgb) in enumerate(stops):
                c.setFillColorRGB(*(v / 255 for v in rgb))
                c.rect(x + i * seg, yy - 8, seg + 0.5, 8, stroke=0, fill=1)
            c.setFillColorRGB(0, 0, 0)
            c.setFont("Helvetica", 6.5)
            c.drawString(x, yy - 16, "least evidence in this image")
            c.drawRightString(x + col_w, yy - 16, "most evidence")
            yy -= 22
        c.setFont("Helvetica", 7.5)
        for part in simpleSplit(caption, "Helvetica", 7.5, col_w):
            yy -= 9.5
            c.drawString(x, yy, part)
        return yy

    line(NOT_FOR_CLINICAL_USE, 10, True)
    line("Computer-aided analysis report", 16, True)
    for k, v in ident:
        line(f"{k}: {v}")
    if notice:
        line(notice, 10, True)
    for title, lines, images in items:
        y -= 6
        line(title, 12, True)
        for t in lines:
            line("- " + t)
        for k in range(0, len(images), 2):
            new_page_if(box_h + 80)
            lowest = min(picture(img, cap, heat, margin + j * (col_w + 5), y)
                         for j, (img, cap, heat) in enumerate(images[k:k + 2]))
            y = lowest - 8
    y -= 6
    line("Technical details", 9, True)
    for k, v in tech:
        line(f"{k}: {v}", 7)
    line(NOT_FOR_CLINICAL_USE, 10, True)
    c.save()
    os.replace(tmp, path)
    return path
