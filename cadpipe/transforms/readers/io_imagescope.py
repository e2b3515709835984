"""Aperio ImageScope XML region annotations <-> label masks, and patch labels from masks.

XML layout: ``Annotations/Annotation[@Name]/(Attributes/Attribute[@Name|@Value])?/Regions/Region/Vertices/
Vertex[@X @Y]``; the class of a region is its annotation's ``Name`` (or, when empty, the first attribute's
``Value`` or ``Name``). Masks are ``(X, Y)`` integer arrays (X = columns, cadpipe axis order), 0 = unlabelled,
``k + 1`` = ``class_names[k]``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

from cadpipe.errors import CadpipeInputError

__all__ = ["read_imagescope_xml", "regions_to_mask", "xml_to_mask", "mask_to_regions", "write_imagescope_xml",
           "patch_label", "find_annotation", "annotation_mask", "check_annotation", "ellipse_region"]


def read_imagescope_xml(path: str | os.PathLike, image_size: Sequence[int] | None = None) -> list[dict]:
    """Regions of an ImageScope XML file as ``[{"class_name": str, "vertices": (K, 2) float array of (x, y)}]``.

    ``image_size = (X, Y)`` checks every vertex lies in ``[0, X] x [0, Y]``. Malformed XML, a region with fewer
    than three vertices, non-numeric coordinates, an annotation without a class, or a vertex outside the image
    raise :class:`CadpipeInputError` naming the file.
    """
    path = os.fspath(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise CadpipeInputError(path, f"malformed ImageScope XML: {e}") from e
    if root.tag != "Annotations":
        raise CadpipeInputError(path, f"malformed ImageScope XML: root element is <{root.tag}>, not <Annotations>")
    regions = []
    for ai, ann in enumerate(root.findall("Annotation")):
        name = (ann.get("Name") or "").strip()
        if not name:
            attr = ann.find("Attributes/Attribute")
            if attr is not None:
                name = (attr.get("Value") or attr.get("Name") or "").strip()
        if not name:
            raise CadpipeInputError(path, f"annotation {ai} has no Name and no Attribute giving its class")
        for ri, reg in enumerate(ann.findall("Regions/Region")):
            try:
                verts = np.array([[float(v.get("X")), float(v.get("Y"))] for v in reg.findall("Vertices/Vertex")],
                                 dtype=np.float64).reshape(-1, 2)
            except (TypeError, ValueError) as e:
                raise CadpipeInputError(path, f"region {reg.get('Id', ri)} of {name!r}: bad vertex coordinate") from e
            if len(verts) < 3:
                raise CadpipeInputError(path, f"region {reg.get('Id', ri)} of {name!r} has {len(verts)} vertices (<3)")
            if image_size is not None:
                bad = (verts[:, 0] < 0) | (verts[:, 1] < 0) | (verts[:, 0] > image_size[0]) | (verts[:, 1] > image_size[1])
                if bad.any():
                    x, y = verts[np.argmax(bad)]
                    raise CadpipeInputError(path, f"region {reg.get('Id', ri)} of {name!r}: vertex ({x:g}, {y:g}) "
                                                  f"outside the image {tuple(int(s) for s in image_size)}")
            regions.append({"class_name": name, "vertices": verts})
    return regions


def regions_to_mask(regions: Sequence[dict], image_size: Sequence[int], class_names: Sequence[str],
                    path: str = "") -> np.ndarray:
    """Rasterise regions into an ``(X, Y)`` uint8 mask (later regions overwrite earlier ones)."""
    from skimage.draw import polygon

    mask = np.zeros(tuple(int(s) for s in image_size[:2]), dtype=np.uint8)
    for r in regions:
        if r["class_name"] not in class_names:
            raise CadpipeInputError(path, f"region class {r['class_name']!r} not in {list(class_names)}")
        v = r["vertices"]
        xx, yy = polygon(v[:, 0], v[:, 1], shape=mask.shape)
        mask[xx, yy] = list(class_names).index(r["class_name"]) + 1
    return mask


def xml_to_mask(path, image_size: Sequence[int], class_names: Sequence[str]) -> np.ndarray:
    """:func:`read_imagescope_xml` (with the bounds check) then :func:`regions_to_mask`."""
    return regions_to_mask(read_imagescope_xml(path, image_size), image_size, class_names, os.fspath(path))


def mask_to_regions(mask: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """Label mask ``(X, Y)`` -> polygon regions (outer contours of each connected component per class)."""
    from skimage.measure import find_contours, label

    regions = []
    for k, name in enumerate(class_names, start=1):
        comp = label(np.asarray(mask) == k)
        for c in range(1, comp.max() + 1):
            padded = np.pad(comp == c, 1).astype(np.float32)
            contours = find_contours(padded, 0.5)
            if not contours:
                continue
            cont = max(contours, key=len) - 1.0  # back to unpadded coordinates
            cont = np.clip(cont, 0, np.array(mask.shape) - 1)
            regions.append({"class_name": name, "vertices": cont[:-1] if len(cont) > 3 else cont})
    return regions


def write_imagescope_xml(path, regions: Sequence[dict]) -> str:
    """Write regions as ImageScope XML (one Annotation per class, Name = class name)."""
    root = ET.Element("Annotations", MicronsPerPixel="0")
    by_class: dict[str, list] = {}
    for r in regions:
        by_class.setdefault(r["class_name"], []).append(r["vertices"])
    for ai, (name, polys) in enumerate(by_class.items(), start=1):
        ann = ET.SubElement(root, "Annotation", Id=str(ai), Name=name, LineColor="65280")
        attrs = ET.SubElement(ann, "Attributes")
        ET.SubElement(attrs, "Attribute", Name=name, Id="0", Value=name)
        regs = ET.SubElement(ann, "Regions")
        for ri, v in enumerate(polys, start=1):
            reg = ET.SubElement(regs, "Region", Id=str(ri), Type="0")
            verts = ET.SubElement(reg, "Vertices")
            for x, y in np.asarray(v):
                ET.SubElement(verts, "Vertex", X=f"{x:.2f}", Y=f"{y:.2f}", Z="0")
    ET.ElementTree(root).write(os.fspath(path), encoding="utf-8", xml_declaration=True)
    return os.fspath(path)


def patch_label(mask: np.ndarray, location: Sequence[int], patch_size: int, min_overlap: float = 0.5) -> int:
    """Label of the patch at corner ``(x, y)``: the class (0-based) whose region covers the largest fraction of
    the patch, if that fraction is at least ``min_overlap``; else ``-1`` (no label; drop the patch)."""
    x, y = int(location[0]), int(location[1])
    sub = np.asarray(mask)[x:x + patch_size, y:y + patch_size]
    counts = np.bincount(sub.ravel().astype(np.int64), minlength=2)[1:]
    if counts.size == 0 or counts.max() == 0:
        return -1
    k = int(np.argmax(counts))
    return k if counts[k] / float(patch_size * patch_size) >= min_overlap else -1


def find_annotation(image_path, annotations_dir: str | os.PathLike | None = None) -> str:
    """The ImageScope XML of an image: ``<annotations_dir>/<stem>.xml`` when ``annotations_dir`` is given, else
    ``<stem>.xml`` beside the image (``.XML`` accepted too). Returns ``""`` when there is none."""
    image_path = os.fspath(image_path)
    stem = os.path.splitext(os.path.basename(image_path))[0]
    folder = os.fspath(annotations_dir) if annotations_dir else os.path.dirname(image_path)
    for ext in (".xml", ".XML"):
        cand = os.path.join(folder, stem + ext)
        if os.path.isfile(cand):
            return cand
    return ""


def _match_classes(path: str, regions: list[dict], class_names: Sequence[str], class_map: dict | None) -> list[dict]:
    lower = {c.lower(): c for c in class_names}
    cmap = {str(k).lower(): v for k, v in (class_map or {}).items()}
    for r in regions:
        name = cmap.get(r["class_name"].lower(), r["class_name"])
        r["class_name"] = lower.get(str(name).lower(), name)
        if r["class_name"] not in class_names:
            raise CadpipeInputError(path, f"region class {r['class_name']!r} not in {list(class_names)} "
                                          f"(map other names with region_class_map)")
    return regions


def check_annotation(path, image_path, class_names: Sequence[str], class_map: dict | None = None) -> int:
    """Validate an ImageScope XML against its image without decoding the image (size from the file header):
    well-formed, vertices inside the image, every region class known. Returns the number of regions; raises
    :class:`CadpipeInputError` naming the XML file (or the image, when it cannot be opened)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(os.fspath(image_path)) as im:
            size = im.size  # (columns, rows) = (X, Y)
    except (OSError, UnidentifiedImageError) as e:
        raise CadpipeInputError(os.fspath(image_path), f"not a readable image ({e})") from e
    path = os.fspath(path)
    return len(_match_classes(path, read_imagescope_xml(path, size), class_names, class_map))


def annotation_mask(path, image_size: Sequence[int], class_names: Sequence[str],
                    class_map: dict | None = None) -> np.ndarray:
    """Label mask ``(X, Y)`` (``k + 1`` = ``class_names[k]``, 0 = no region) of an ImageScope XML for an image of
    ``image_size = (X, Y)``.

    Region class names are mapped through ``class_map`` (e.g. ``{"Carcinoma in situ": "InSitu"}``) and then
    matched to ``class_names`` ignoring case. Malformed XML, vertices outside the image or a class that matches
    none of ``class_names`` raise :class:`CadpipeInputError` naming the file.
    """
    path = os.fspath(path)
    regions = _match_classes(path, read_imagescope_xml(path, image_size), class_names, class_map)
    return regions_to_mask(regions, image_size, class_names, path)


def ellipse_region(box: Sequence[float], class_name: str, n: int = 32) -> dict:
    """Polygon region (``n`` vertices) of the ellipse inscribed in ``box = (x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    verts = np.stack([(x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(t), (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(t)], 1)
    return {"class_name": class_name, "vertices": verts}
