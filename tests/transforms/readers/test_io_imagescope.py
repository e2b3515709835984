import numpy as np
import pytest

from cadpipe.transforms.readers.io_imagescope import (
    mask_to_regions,
    patch_label,
    read_imagescope_xml,
    regions_to_mask,
    write_imagescope_xml,
    xml_to_mask,
)
from cadpipe.errors import CadpipeInputError

NAMES = ["Benign", "InSitu", "Invasive"]

XML = """<?xml version="1.0"?>
<Annotations>
 <Annotation Id="1" Name="Invasive"><Regions><Region Id="1"><Vertices>
  <Vertex X="10" Y="10"/><Vertex X="50" Y="10"/><Vertex X="50" Y="40"/><Vertex X="10" Y="40"/>
 </Vertices></Region></Regions></Annotation>
 <Annotation Id="2" Name=""><Attributes><Attribute Name="Description" Value="Benign"/></Attributes>
  <Regions><Region Id="1"><Vertices><Vertex X="60" Y="0"/><Vertex X="79" Y="0"/><Vertex X="79" Y="20"/></Vertices></Region></Regions>
 </Annotation>
</Annotations>"""


def test_read_xml_classes_from_name_and_attribute(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(XML)
    regions = read_imagescope_xml(p, image_size=(80, 60))
    assert [r["class_name"] for r in regions] == ["Invasive", "Benign"]
    mask = xml_to_mask(p, (80, 60), NAMES)
    assert mask.shape == (80, 60)
    assert mask[30, 25] == 3 and mask[5, 5] == 0 and mask[75, 2] == 1


def test_mask_xml_round_trip(tmp_path):
    mask = np.zeros((100, 80), np.uint8)
    mask[10:40, 20:60] = 2
    yy, xx = np.mgrid[0:100, 0:80]
    mask[((xx - 60) ** 2 + (yy - 75) ** 2) < 15 ** 2] = 3
    p = write_imagescope_xml(tmp_path / "out.xml", mask_to_regions(mask, NAMES))
    back = xml_to_mask(p, mask.shape, NAMES)
    for k in (2, 3):
        a, b = mask == k, back == k
        assert (a & b).sum() / (a | b).sum() > 0.85


def test_patch_label_min_overlap():
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, :] = 3  # left half Invasive
    assert patch_label(mask, (0, 0), 32) == 2
    assert patch_label(mask, (16, 0), 32, min_overlap=0.5) == 2  # exactly half
    assert patch_label(mask, (24, 0), 32, min_overlap=0.5) == -1
    assert patch_label(mask, (32, 32), 32) == -1


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<Annotations><Annotation Name='x'>", "malformed ImageScope XML"),
        ("<Regions/>", "not <Annotations>"),
        ("<Annotations><Annotation Name='Benign'><Regions><Region><Vertices><Vertex X='1' Y='1'/></Vertices>"
         "</Region></Regions></Annotation></Annotations>", "vertices (<3)"),
        ("<Annotations><Annotation Name='Benign'><Regions><Region><Vertices><Vertex X='1' Y='1'/>"
         "<Vertex X='a' Y='1'/><Vertex X='1' Y='2'/></Vertices></Region></Regions></Annotation></Annotations>",
         "bad vertex coordinate"),
        ("<Annotations><Annotation Name='Benign'><Regions><Region><Vertices><Vertex X='1' Y='1'/>"
         "<Vertex X='500' Y='1'/><Vertex X='1' Y='2'/></Vertices></Region></Regions></Annotation></Annotations>",
         "outside the image"),
        ("<Annotations><Annotation><Regions/></Annotation></Annotations>", "no Name"),
    ],
)
def test_bad_xml_names_the_file(tmp_path, text, reason):
    p = tmp_path / "bad.xml"
    p.write_text(text)
    with pytest.raises(CadpipeInputError) as e:
        read_imagescope_xml(p, image_size=(80, 60))
    assert str(p) in str(e.value) and reason in str(e.value)


def test_unknown_class_in_mask(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(XML)
    with pytest.raises(CadpipeInputError) as e:
        xml_to_mask(p, (80, 60), ["Normal"])
    assert str(p) in str(e.value) and "Invasive" in str(e.value)


def test_find_and_check_annotation(tmp_path):
    from PIL import Image

    from cadpipe.transforms.readers.io_imagescope import check_annotation, find_annotation

    img = tmp_path / "photo.tif"
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(img)  # 60 rows x 80 columns: (X, Y) = (80, 60)
    assert find_annotation(img) == ""
    (tmp_path / "photo.xml").write_text(XML)
    assert find_annotation(img) == str(tmp_path / "photo.xml")
    other = tmp_path / "ann"
    other.mkdir()
    assert find_annotation(img, other) == ""
    (other / "photo.xml").write_text(XML)
    assert find_annotation(img, other) == str(other / "photo.xml")
    assert check_annotation(other / "photo.xml", img, ["benign", "INVASIVE"]) == 2  # class names ignore case
    with pytest.raises(CadpipeInputError) as e:
        check_annotation(other / "photo.xml", img, ["Normal", "Invasive"])
    assert str(other / "photo.xml") in str(e.value) and "'Benign' not in" in str(e.value)
    assert check_annotation(other / "photo.xml", img, ["Normal", "Invasive"], {"benign": "Normal"}) == 2
    # the same XML against a smaller image: a vertex falls outside, found from the image header alone
    small = tmp_path / "small.tif"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(small)
    with pytest.raises(CadpipeInputError) as e:
        check_annotation(other / "photo.xml", small, NAMES)
    assert str(other / "photo.xml") in str(e.value) and "outside the image (40, 30)" in str(e.value)


def test_annotation_mask_and_ellipse_region(tmp_path):
    from cadpipe.transforms.readers.io_imagescope import annotation_mask, ellipse_region

    p = write_imagescope_xml(tmp_path / "e.xml", [ellipse_region((10, 20, 50, 40), "invasive")])
    mask = annotation_mask(p, (64, 48), NAMES)
    assert mask[30, 30] == 3 and mask[11, 21] == 0 and mask[5, 5] == 0
    area = np.pi * 20 * 10
    assert abs((mask == 3).sum() - area) / area < 0.1
