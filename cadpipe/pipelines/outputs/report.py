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

import numpy as np

from cadpipe.pipelines.outputs.files import atomic_write_bytes, atomic_writer_path

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


def _img_tag(path: str) -> str:
    with open(path, "rb") as f:
        b64 = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{b64}" style="max-width:480px">'


def write_study_report(study_dir: str, study_id: str, rows: list[dict], patient: dict, bundle: dict,
                       out_dir: str) -> list[str]:
    """Write ``<study_dir>/report.html`` (self-contained: images inlined as base64) and ``report.pdf`` when
    reportlab is installed. ``rows`` are the journal rows of the study's units (with ``_findings`` and
    ``_outputs``). Returns the written paths.
    """
    e = html.escape
    ident = [("Patient ID", patient.get("PatientID", "")), ("Patient name", patient.get("PatientName", "")),
             ("Study", study_id), ("Study date", patient.get("StudyDate", "")),
             ("Accession", patient.get("AccessionNumber", ""))]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cadpipe report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:3px 6px}.warn{background:#fee;border:2px solid #c00;padding:8px;"
        "font-weight:bold}</style></head><body>",
        f"<p class='warn'>{e(NOT_FOR_CLINICAL_USE)}</p>",
        "<h1>Computer-aided analysis report</h1><table>",
        *[f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in ident if v],
        f"<tr><th>Model</th><td>{e(bundle['name'])} version {e(bundle['version'])} "
        f"(weights sha256 {e(bundle['model_sha256'][:12])}…)</td></tr></table>",
    ]
    pdf_items: list[tuple[str, list[str], list[str]]] = []
    for row in rows:
        title = f"Series {row.get('series_id')} — {os.path.basename(str(row.get('input_paths', '')).split(';')[0])}"
        parts.append(f"<h2>{e(title)}</h2>")
        lines: list[str] = []
        if row.get("status") != "ok":
            lines = [f"Could not be analysed: {row.get('error')}"]
        else:
            lines = [f["text"] for f in row.get("_findings", [])] or ["No findings."]
            probs = {k[5:]: v for k, v in row.items() if k.startswith("prob_")}
            if probs:
                parts.append("<table><tr>" + "".join(f"<th>{e(k)}</th>" for k in probs) + "</tr><tr>"
                             + "".join(f"<td>{float(v):.1%}</td>" for v in probs.values()) + "</tr></table>")
        parts.append("<ul>" + "".join(f"<li>{e(t)}</li>" for t in lines) + "</ul>")
        images = [os.path.join(out_dir, p) for p in row.get("_outputs", {}).get("overlays", [])]
        images = [p for p in images if os.path.isfile(p)]
        parts.extend(_img_tag(p) for p in images)
        pdf_items.append((title, lines, images))
    parts.append(f"<p class='warn'>{e(NOT_FOR_CLINICAL_USE)}</p><p><small>Generated by cadpipe.</small></p>"
                 "</body></html>")
    html_path = os.path.join(study_dir, "report.html")
    atomic_write_bytes(html_path, "\n".join(parts).encode("utf-8"))
    written = [html_path]
    try:
        written.append(_write_pdf(os.path.join(study_dir, "report.pdf"), ident, bundle, pdf_items))
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


def _write_pdf(path: str, ident, bundle: dict, items) -> str:
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
        if v:
            line(f"{k}: {v}")
    line(f"Model: {bundle['name']} version {bundle['version']}")
    for title, lines, images in items:
        y -= 6
        line(title, 12, True)
        for t in lines:
            line("- " + t)
        for img in images:
            if y < 260:
                c.showPage()
                y = height - 40
            c.drawImage(ImageReader(_pdf_image(img)), 40, y - 220, width=220, height=220, preserveAspectRatio=True)
            y -= 230
    line(NOT_FOR_CLINICAL_USE, 10, True)
    c.save()
    os.replace(tmp, path)
    return path
