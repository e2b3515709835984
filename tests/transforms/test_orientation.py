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
