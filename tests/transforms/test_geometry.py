import numpy as np
import pytest

from cadpipe.transforms.geometry import voxel_size


def test_voxel_size_of_axial_coronal_oblique_and_volumes():
    assert voxel_size(np.diag([0.5, 0.25, 1.0]), 2) == pytest.approx(0.125)  # a 2D affine (PNG-like, LJPEG)
    coronal = np.eye(4)
    coronal[:3, 0], coronal[:3, 1], coronal[:3, 2] = [-0.5, 0, 0], [0, 0, -0.25], [0, 3.0, 0]
    assert voxel_size(coronal, 2) == pytest.approx(0.125)  # the top-left 2x2 block has determinant 0
    assert voxel_size(coronal, 3) == pytest.approx(0.375)
    c, s = np.cos(0.6), np.sin(0.6)
    oblique = np.eye(4)
    oblique[:3, 0], oblique[:3, 1], oblique[:3, 2] = [0.2 * c, 0.2 * s, 0], [0, 0, -0.2], [3 * s, -3 * c, 0]
    assert voxel_size(oblique, 2) == pytest.approx(0.04)
    sheared = np.eye(4)  # a gantry-tilted CT: the slice step is not along the normal
    sheared[:3, 2] = [0, 0.5, 2.0]
    assert voxel_size(sheared, 3) == pytest.approx(2.0)


def test_voxel_size_refuses_what_is_not_an_affine():
    with pytest.raises(ValueError, match="square affine"):
        voxel_size(np.eye(3), 3)
    with pytest.raises(ValueError, match="square affine"):
        voxel_size(np.ones((3, 4)), 2)
