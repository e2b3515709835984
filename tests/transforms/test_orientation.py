import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from cadpipe.transforms import SpatialOrientation, SpatialOrientationd


def _img(shape, flips):
    """A channel-first image whose affine flips the axes marked -1 (LPS-like for 3D, L for 2D)."""
    return MetaTensor(torch.arange(float(np.prod(shape))).reshape(1, *shape), affine=torch.diag(torch.tensor([*flips, 1.0])))


@pytest.mark.parametrize("shape,flips,want", [((3, 4), [-1.0, 1.0, 1.0], "RA"), ((2, 3, 4), [-1.0, -1.0, 1.0], "RAS")])
def test_orients_2d_and_3d_without_warnings_and_inverts(shape, flips, want):
    import nibabel as nib

    x = _img(shape, flips)
    t = SpatialOrientationd("image", axcodes="RAS")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MONAI's Orientation("RAS") warns on a 2D image; this must not
        y = t({"image": x})["image"]
        back = t.inverse({"image": y})["image"]
    dims = len(shape)
    assert (torch.diagonal(y.affine)[:dims] > 0).all(), want  # every spatial axis now points to R, A (, S)
    assert torch.equal(y[0], x[0].flip(*[i for i in range(dims) if flips[i] < 0]))
    assert torch.equal(back.as_tensor(), x.as_tensor())


def test_too_many_dims_is_a_clear_error():
    with pytest.raises(ValueError, match="4 spatial dimensions"):
        SpatialOrientation("RAS")(MetaTensor(torch.zeros(1, 2, 2, 2, 2)))


# -------------------------------------------------------------- a 2D image lying in 3D space (one DICOM slice)
from cadpipe.transforms.orientation import PlaneOrientation, plane_orientation  # noqa: E402

_MR2_IOP = (0.569486, 0.822001, 0.0, 0.0, 0.0, -1.0)  # pydicom-data's MR2_UNCR.dcm: an oblique slice


def _slice_affine(iop, spacing=(0.5, 0.25), position=(10.0, -20.0, 30.0), thickness=3.0):
    """The reader's RAS affine of one slice: column index along the row direction, row index along the column
    direction, the normal third (as cadpipe.transforms.readers.io_dicom builds it), LPS -> RAS."""
    iop = np.asarray(iop, dtype=float)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1] = row * spacing[1], col * spacing[0]
    aff[:3, 2] = np.cross(row, col) * thickness
    aff[:3, 3] = position
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


def _world(aff, shape):
    """RAS position of every pixel centre, (X, Y, 3)."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    idx = np.stack([i, j, np.zeros_like(i), np.ones_like(i)], -1).astype(float)
    return (idx @ np.asarray(aff, dtype=float).T)[..., :3]


@pytest.mark.parametrize("iop,axes", [
    ((1, 0, 0, 0, 1, 0), "RA"),  # axial: as MONAI's "RA"
    ((1, 0, 0, 0, 0, -1), "RS"),  # coronal: the 2x2 block MONAI reads is singular
    ((0, 1, 0, 0, 0, -1), "AS"),  # sagittal
    ((0, 0, -1, 1, 0, 0), "RS"),  # coronal with rows and columns swapped: transposed
    (_MR2_IOP, "AS"),  # oblique, nearest A and S
])
def test_a_slice_of_any_plane_is_reoriented_keeping_every_pixel_in_place(iop, axes):
    import nibabel as nib

    shape = (5, 4)
    x = MetaTensor(torch.arange(20.0).reshape(1, *shape), affine=torch.as_tensor(_slice_affine(iop)))
    t = SpatialOrientationd("image", axcodes="RAS")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = t({"image": x})["image"]
        back = t.inverse({"image": y})["image"]
    assert "".join(nib.aff2axcodes(np.asarray(y.affine))[:2]) == axes  # both axes point to the canonical side
    before = {tuple(np.round(p, 6)): float(v) for p, v in zip(_world(x.affine, shape).reshape(-1, 3),
                                                                x[0].reshape(-1).tolist())}
    after = {tuple(np.round(p, 6)): float(v) for p, v in zip(_world(y.affine, y.shape[1:]).reshape(-1, 3),
                                                               y[0].reshape(-1).tolist())}
    assert before == after  # the same value at the same place in the patient
    assert torch.equal(back.as_tensor(), x.as_tensor())
    np.testing.assert_allclose(np.asarray(back.affine), np.asarray(x.affine), atol=1e-9)
    assert back.applied_operations == []


def test_an_axial_slice_is_reoriented_exactly_as_monai_does():
    from monai.transforms import Orientation

    x = MetaTensor(torch.arange(12.0).reshape(1, 3, 4), affine=torch.as_tensor(_slice_affine((1, 0, 0, 0, 1, 0))))
    ours = SpatialOrientation("RAS")(x.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai = Orientation("RA")(x.clone())
    assert torch.equal(ours.as_tensor(), monai.as_tensor())
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(monai.affine))


def test_plane_orientation():
    np.testing.assert_array_equal(plane_orientation(_slice_affine((1, 0, 0, 0, 1, 0))), [[0, -1], [1, -1]])
    # rows towards I, columns towards L (RAS): both flipped, and swapped to put R first
    np.testing.assert_array_equal(plane_orientation(_slice_affine((0, 0, -1, 1, 0, 0))), [[1, -1], [0, -1]])
    # other target codes: LPS keeps an LPS-built axial slice as it is
    np.testing.assert_array_equal(plane_orientation(_slice_affine((1, 0, 0, 0, 1, 0)), "LPS"), [[0, 1], [1, 1]])
    no_axis = _slice_affine((1, 0, 0, 0, 1, 0))
    no_axis[:3, 1] = 0
    assert plane_orientation(no_axis) is None  # a zero axis places nothing
    assert plane_orientation(np.eye(3)) is None  # a 2D affine: MONAI's own 2D orientation applies
    assert plane_orientation(_slice_affine((1, 0, 0, 0, 1, 0)), "RA") is None
    assert not PlaneOrientation().applies(MetaTensor(torch.zeros(1, 2, 2, 2)))  # volumes: MONAI's Orientation
