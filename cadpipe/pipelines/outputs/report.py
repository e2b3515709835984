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


def overlay_png(image: np.ndarray, heatmap: np.ndarray | None = None, mask: np.ndarray | None = None,
                boxes: list[dict] | None = None, path: str | None = None, durable: bool = True) -> bytes:
    """Render a grey image (X, Y[, Z]) with a heatmap, label mask and/or boxes; returns PNG bytes (and writes
    them atomically to ``path`` when given; ``durable=False``: no fsync, see ``files.atomic_write_bytes``).
    Boxes are dicts with ``box`` (xyxy in (X, Y) pixels), ``label``, ``score``. PNGs use zlib level 1 (about 4x
    faster to encode than PIL's default 6, files ~25% larger).
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[0] < min(image.shape[1:]):
        image = image.mean(0)  # channel-first 2D
    image, mask = pick_slice(image, mask)
    rgb = np.repeat(_gray_u8(image.T)[..., None], 3, axis=-1).astype(np.float32)
    if heatmap is not None:
        hm = np.asarray(heatmap, dtype=np.float32)
        if hm.ndim == 3:
            hm = hm[..., hm.shape[-1] // 2]
        if hm.shape != image.shape:
            import torch

            hm = torch.nn.functional.interpolate(torch.as_tensor(hm)[None, None], size=image.shape,
                                                 mode="bilinear", align_corners=False)[0, 0].numpy()
        hm = (hm - hm.min()) / (np.ptp(hm) + 1e-8)
        alpha = 0.45 * hm.T[..., None]
        rgb = rgb * (1 - alpha) + _hot(hm.T).astype(np.float32) * alpha
    if mask is not None:
        m = np.asarray(mask).T
        for lab in [v for v in np.unique(m) if v > 0]:
            colour = np.array(FINDING_COLOURS.get("mask" if lab == 1 else f"mask{int(lab)}", (255, 0, 0)), float)
            sel = m == lab
            rgb[sel] = rgb[sel] * 0.5 + colour * 0.5
    pil = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if boxes:
        draw = ImageDraw.Draw(pil)
        for b in boxes:
            x0, y0, x1, y1 = (float(v) for v in b["box"])
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


def _img_tag(path: str, caption: str) -> str:
    with open(path, "rb") as f:
        b64 = base64.b64encode(f.read()).decode("ascii")
    cap = html.escape(caption or os.path.basename(path))
    return (f'<figure><img alt="{cap}" src="data:image/png;base64,{b64}" style="max-width:480px">'
            f"<figcaption>{cap}</figcaption></figure>")


_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def _is_uid(text: str) -> bool:
    return bool(_UID.match(str(text or "")))


def _unit_title(index: int, row: dict) -> str:
    """``"Image 2: IM0001.dcm (CC, left)"``: the file name, not the series UID."""
    name = os.path.basename(str(row.get("input_paths", "")).split(";")[0])
    series = str(row.get("series_id", ""))
    label = name or series
    if series and not _is_uid(series) and series not in name:
        label = f"{series} — {name}" if name else series
    view = view_text(row.get("_patient") or {})
    return f"Image {index}: {label}" + (f" ({view})" if view else "")


def _probability_block(row: dict, e) -> tuple[str, list[str]]:
    """The probability table(s) of a classification row: HTML, and lines for the PDF.

    Multi-label: the classes not reported as findings go into a collapsed table (``<details>``)."""
    probs = {k[5:]: float(v) for k, v in row.items() if k.startswith("prob_") and v is not None}
    if not probs:
        return "", []
    thr = row.get("_thresholds") or {}
    positive = {f.get("type") for f in row.get("_findings", []) if f.get("call") == "positive"}
    multilabel = row.get("_task") == "multilabel"

    def table(names) -> str:
        head = "<tr><th>Class</th><th>Probability</th>" + ("<th>Operating threshold</th>" if thr else "") + "</tr>"
        body = "".join(f"<tr><td>{e(n.replace('_', ' '))}</td><td>{probs[n]:.1%}</td>"
                       + (f"<td>{float(thr[n]):.1%}</td>" if n in thr else "<td>—</td>" if thr else "") + "</tr>" for n in names)
        return f"<table>{head}{body}</table>"

    names = sorted(probs, key=lambda n: -probs[n])
    if multilabel:
        rest = [n for n in names if n not in positive]
        html_ = (f"<details><summary>Other classes, below their operating threshold ({len(rest)})</summary>"
                 f"{table(rest)}</details>") if rest else ""
        return html_, []
    lines = ["Probabilities: " + ", ".join(f"{n.replace('_', ' ')} {probs[n]:.1%}" for n in names)]
    return table(names), lines


def write_study_report(study_dir: str, study_id: str, rows: list[dict], patient: dict, bundle: dict,
                       out_dir: str) -> list[str]:
    """Write ``<study_dir>/report.html`` (self-contained: images inlined as base64) and ``report.pdf`` when
    reportlab is installed. Returns the written paths.

    ``rows`` are the journal rows of the study's units: ``_findings`` (sentences, see
    :mod:`cadpipe.pipelines.outputs.findings`), ``_outputs`` (``overlays``: image paths relative to ``out_dir``),
    ``_captions`` (one per overlay), ``_thresholds`` (class → operating threshold) and ``_patient`` (the unit's
    DICOM identifiers, for its view and UIDs). The header shows ``patient`` in human form
    (:mod:`cadpipe.pipelines.outputs.patient_header`); UIDs only appear under "Technical details".
    """
    e = html.escape
    ident = patient_lines(patient)
    if study_id and not _is_uid(study_id) and not any(k == "Study" for k, _ in ident):
        ident.append(("Study", str(study_id)))
    model = f"{bundle['name']} version {bundle['version']}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cadpipe report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:3px 6px;text-align:left}.warn{background:#fee;border:2px solid #c00;"
        "padding:8px;font-weight:bold}figure{display:inline-block;margin:6px}figcaption{font-size:90%;"
        "max-width:480px}.tech{font-size:80%;color:#444}summary{cursor:pointer}</style></head><body>",
        f"<p class='warn'>{e(NOT_FOR_CLINICAL_USE)}</p>",
        "<h1>Computer-aided analysis report</h1><table>",
        *[f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in ident],
        f"<tr><th>Analysis</th><td>{e(model)}</td></tr></table>",
    ]
    pdf_items: list[tuple[str, list[str], list[tuple[str, str]]]] = []
    for index, row in enumerate(rows, start=1):
        title = _unit_title(index, row)
        parts.append(f"<h2>{e(title)}</h2>")
        pdf_lines: list[str] = []
        if row.get("status") != "ok":
            lines = [f"Could not be analysed: {row.get('error')}"]
        else:
            lines = [f["text"] for f in row.get("_findings", [])] or ["No findings."]
        parts.append("<ul>" + "".join(f"<li>{e(t)}</li>" for t in lines) + "</ul>")
        if row.get("status") == "ok":
            block, pdf_lines = _probability_block(row, e)
            parts.append(block)
        overlays = list(row.get("_outputs", {}).get("overlays", []))
        captions = list(row.get("_captions") or [])
        images = [(os.path.join(out_dir, p), captions[i] if i < len(captions) else "") for i, p in enumerate(overlays)]
        images = [(p, c) for p, c in images if os.path.isfile(p)]
        parts.extend(_img_tag(p, c) for p, c in images)
        pdf_items.append((title, lines + pdf_lines, images))
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
                                  pdf_items))
    except ImportError:
        pass
    return written


PDF_IMAGE_MAX_PX = 1024  # the PDF draws each image in a 220 pt (3.1 in) box: 1024 px is about 330 dpi


def _pdf_image(path: str):
    """The overlay PNG for the PDF, its long side cut to ``PDF_IMAGE_MAX_PX`` (a 2048x1536 histology overlay
    embedded whole cost ~2.5 s of encoding for a 3-inch picture; report.html keeps the full image)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if max(img.size) > PDF_IMAGE_MAX_PX:
            img.thumbnail((PDF_IMAGE_MAX_PX, PDF_IMAGE_MAX_PX), Image.Resampling.LANCZOS)
        return img.copy()


def _write_pdf(path: str, ident, tech, items) -> str:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    tmp = atomic_writer_path(path)
    c = canvas.Canvas(tmp, pagesize=A4)
    width, height = A4
    y = height - 40

    def line(text: str, size: int = 10, bold: bool = False):
        nonlocal y
        if y < 60:
            c.showPage()
            y = height - 40
        c.setFont("Helvetica-Bold" if bold else "Helvetica", size)
        c.drawString(40, y, text[:110])
        y -= size + 4

    line(NOT_FOR_CLINICAL_USE, 10, True)
    line("Computer-aided analysis report", 16, True)
    for k, v in ident:
        line(f"{k}: {v}")
    for title, lines, images in items:
        y -= 6
        line(title, 12, True)
        for t in lines:
            line("- " + t)
        for img, caption in images:
            if y < 280:
                c.showPage()
                y = height - 40
            c.drawImage(ImageReader(_pdf_image(img)), 40, y - 220, width=220, height=220, preserveAspectRatio=True,
                        anchor="sw")
            y -= 230
            line(caption, 8)
    y -= 6
    line("Technical details", 9, True)
    for k, v in tech:
        line(f"{k}: {v}", 7)
    line(NOT_FOR_CLINICAL_USE, 10, True)
    c.save()
    os.replace(tmp, path)
    return path
