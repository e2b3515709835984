"""CLAHE as MONAI transforms (``CLAHE``, ``CLAHEd``), with ``skimage.exposure.equalize_adapthist``'s semantics.

The kernels live in two MONAI-free modules, so a batched GPU path can use them without MONAI:

- ``cadpipe.transforms.clahe.clahe_batched.clahe_batch``: CLAHE of a ``(B, C, H, W)`` batch (or a list of
  ``(C, H, W)`` images of any sizes), each channel of each image on its own; vectorised over the whole batch
  on a GPU, per image (``clahe_2d``) on the CPU. Its docstring states how each image's intensity range is
  taken (its own min-max).
- ``cadpipe.transforms.clahe.clahe_image.clahe_2d``: one 2D image, tuned for the CPU; its module docstring
  describes the algorithm step by step and the (below 1e-4) differences from skimage.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_tensor import MetaTensor
from monai.transforms.transform import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from cadpipe.transforms.clahe.clahe_batched import IMPLS, clahe_batch
from cadpipe.transforms.clahe.clahe_image import clahe_2d

__all__ = ["CLAHE", "CLAHEd", "clahe_batch", "clahe_2d"]


class CLAHE(Transform):
    """Contrast-limited adaptive histogram equalisation, ``skimage.exposure.equalize_adapthist`` semantics.

    Works on numpy arrays and torch tensors (CPU or GPU: the same torch code runs on the tensor's device);
    numpy in gives numpy out, a tensor gives a tensor on the same device (a ``MetaTensor`` keeps its meta).

    Input shapes (channel-first, as MONAI's readers give them):

    - ``(C, H, W)``: a 2D image; each channel is equalised on its own.
    - ``(C, H, W, D)``: a volume, equalised slice by slice along the **last** axis (``D``, the axial
      slices of a RAS-oriented CT/MRI): each ``[c, :, :, d]`` slice is one 2D image.

    Any real dtype: ``uint8``, ``uint16`` (e.g. 12-bit mammograms), signed integers, floats; each 2D image
    is rescaled from its own min-max like skimage does (details: ``clahe_batch``). Output: float
    (``dtype``) in ``[0, 1]``, the same shape. All 2D images of one call go through ``clahe_batch`` as one
    batch: on a GPU one vectorised pass, on the CPU the per-image kernel. See
    ``cadpipe.transforms.clahe.clahe_image`` for the algorithm and the (below 1e-4) differences from skimage.

    Args:
        kernel_size: tile size in pixels along the two in-plane axes ``(H, W)`` (an int for both). Default
            ``None``: 1/8 of each in-plane size (at least 1), like skimage.
        clip_limit: clipping limit normalised to ``[0, 1]`` (the histogram of a tile of ``n`` pixels is
            clipped at ``int(max(clip_limit * n, 1))``); ``0`` or ``>= 1`` gives plain AHE. Default 0.01.
        nbins: number of histogram bins. Default 256.
        dtype: output dtype, default float32.
        num_threads: CPU threads for one image: ``n > 1`` processes bands of tile rows on ``n`` Python
            threads, each running torch ops on one intra-op thread (torch's setting is set to 1 while
            the transform runs and restored after). Default 1: best when the cores are shared with
            other processes or images are already processed in parallel (DataLoader workers).
            ``None``: ``torch.get_num_threads()`` (all cores by default), for one large image on an
            otherwise idle machine. Ignored on a GPU.
        impl: ``clahe_batch``'s choice of kernel: ``"auto"`` (the Triton kernels on a GPU where Triton is
            importable, else vectorised torch ops; per image on the CPU), ``"triton"``, ``"vectorised"``
            or ``"per_image"``.

    Raises:
        CadpipeInputError: a float image with NaN or infinite values (the path is taken from the
            ``MetaTensor``'s ``filename_or_obj`` when there is one).

    Reference: K. Zuiderveld, "Contrast Limited Adaptive Histogram Equalization", Graphics Gems IV, 1994.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        kernel_size: Sequence[int] | int | None = None,
        clip_limit: float = 0.01,
        nbins: int = 256,
        dtype: DtypeLike | torch.dtype = torch.float32,
        num_threads: int | None = 1,
        impl: str = "auto",
    ) -> None:
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if nbins < 1:
            raise ValueError(f"nbins must be >= 1, got {nbins}")
        if clip_limit < 0:
            raise ValueError(f"clip_limit must be >= 0, got {clip_limit}")
        self.kernel_size = kernel_size
        self.clip_limit = float(clip_limit)
        self.nbins = int(nbins)
        self.dtype = dtype
        self.num_threads = num_threads
        self.impl = impl

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        path = None
        if isinstance(img, MetaTensor):
            path = img.meta.get("filename_or_obj")
        if isinstance(img, np.ndarray) and img.dtype.kind in "biuf":
            # zero-copy where possible (MONAI's converter would widen uint16 to int32)
            arr = np.ascontiguousarray(img, dtype=img.dtype.newbyteorder("="))  # native byte order
            x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        else:
            x = convert_to_tensor(img, track_meta=False)
        if x.ndim not in (3, 4):
            raise ValueError(f"CLAHE expects (C, H, W) or (C, H, W, D), got shape {tuple(x.shape)}")
        if x.ndim == 4:
            c, h, w, d = x.shape
            batch = x.permute(0, 3, 1, 2).reshape(c * d, 1, h, w)  # one 2D image per (channel, slice)
        else:
            batch = x[None]
        out = clahe_batch(batch, self.kernel_size, self.clip_limit, self.nbins, num_threads=self.num_threads,
                          path=path, impl=self.impl)
        if x.ndim == 4:
            out = out.view(c, d, h, w).permute(0, 2, 3, 1).contiguous()
        else:
            out = out[0]
        out_t, *_ = convert_to_dst_type(out, img, dtype=self.dtype)
        return out_t


class CLAHEd(MapTransform):
    """Dictionary-based wrapper of :py:class:`CLAHE`: equalises ``data[key]`` for each key.

    Args:
        keys: keys of the images to equalise. See also: ``monai.transforms.MapTransform``.
        kernel_size, clip_limit, nbins, dtype, num_threads, impl: as :py:class:`CLAHE`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = CLAHE.backend

    def __init__(
        self,
        keys: KeysCollection,
        kernel_size: Sequence[int] | int | None = None,
        clip_limit: float = 0.01,
        nbins: int = 256,
        dtype: DtypeLike | torch.dtype = torch.float32,
        num_threads: int | None = 1,
        impl: str = "auto",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clahe = CLAHE(kernel_size, clip_limit, nbins, dtype=dtype, num_threads=num_threads, impl=impl)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clahe(d[key])
        return d
