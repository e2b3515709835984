"""A bounded read of a DICOM file's header: is it DICOM at all, its identifiers, its declared image size.

Discovery and the pixel-count guard need the header only. ``pydicom.dcmread(force=True)`` on a large junk file
named ``.dcm`` parses it element by element (a zero-filled gigabyte takes minutes), so :func:`read_dicom_header`

- decides "DICOM or not" from the 128-byte preamble + ``DICM``, or, for files without a preamble, from the first
  data element (group ``0x0002`` or ``0x0008``, as old ACR-NEMA style files start), without parsing further;
- parses with large values deferred (seeked over, not read) and stops before the pixel data;
- then, before the file is closed, reads the deferred values it kept (a long StudyDescription, PatientName or
  UID), so that nothing read later touches the file; a value over :data:`VALUE_READ_LIMIT` (64 KiB) is dropped
  instead (read as absent) and its tag listed in :attr:`DicomHeader.dropped`;
- stops reading after ``max_read`` bytes, read-back values included (default 4 MiB; real headers are far
  smaller): the file is then reported
  as "not a DICOM file" by name, within a second or two;
- with ``keywords``, keeps only those elements (plus the image size and character set): discovery reads ~20
  identifiers of every file, and pydicom's conversion of all the others was most of its time.

:meth:`DicomHeader.get` decodes plain ASCII text values itself (what pydicom would return for them, tested on
pydicom's own files) and leaves anything else (other character sets, multiple values, numbers) to pydicom.
"""

from __future__ import annotations

import os
import warnings

from cadpipe.errors import CadpipeInputError

__all__ = ["DicomHeader", "read_dicom_header", "HEADER_READ_LIMIT", "VALUE_READ_LIMIT"]

HEADER_READ_LIMIT = 4 << 20
VALUE_READ_LIMIT = 64 << 10  # the longest deferred value read back into the header (a text value is <= 10 KiB)
_DEFER = 1024
_PIXEL_TAGS = {0x7FE00010, 0x7FE00009, 0x7FE00008}
_FIRST_GROUPS = (0x0002, 0x0008)
_SIZE_KEYWORDS = ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "SpecificCharacterSet")
# text VRs whose pydicom value, as str, is the stored ASCII text without trailing spaces/NULs
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "PN", "SH", "TM", "UI"}


class _OverBudget(Exception):
    pass


class _BoundedFile:
    """A read-only binary file that raises :class:`_OverBudget` once more than ``budget`` bytes were read
    (seeks are free: pydicom seeks over deferred values)."""

    def __init__(self, f, budget: int):
        self._f, self.budget, self.read_bytes = f, budget, 0
        self.name = getattr(f, "name", "")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.budget - self.read_bytes + 1
        data = self._f.read(n)
        self.read_bytes += len(data)
        if self.read_bytes > self.budget:
            raise _OverBudget()
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        pass


class DicomHeader:
    """The header of one DICOM file: ``dataset`` (pixel data not read), ``has_pixels`` and the declared image size
    (``rows``, ``cols``, ``frames``, ``samples``)."""

    def __init__(self, dataset, has_pixels: bool, path: str = "", dropped: tuple[int, ...] = ()):
        self.dataset, self.has_pixels, self.path = dataset, has_pixels, path
        self.dropped = dropped  # tags of values over VALUE_READ_LIMIT, left out of ``dataset``

    def _size(self, key: str, default: int) -> int:
        try:
            return int(self.dataset.get(key, default) or default)
        except (TypeError, ValueError):
            raise CadpipeInputError(self.path, f"malformed {key} in the DICOM header") from None

    @property
    def rows(self) -> int:
        return self._size("Rows", 0)

    @property
    def cols(self) -> int:
        return self._size("Columns", 0)

    @property
    def frames(self) -> int:
        return self._size("NumberOfFrames", 1)

    @property
    def samples(self) -> int:
        return self._size("SamplesPerPixel", 1)

    def get_int(self, key: str, default: int = 0) -> int:
        """The integer value of keyword ``key`` (an IS/US/... element); ``default`` when absent, empty or not an
        integer."""
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(key)
        elem = self.dataset.get_item(tag) if tag is not None and tag in self.dataset else None
        raw = getattr(elem, "value", None) if getattr(elem, "is_raw", False) else None
        if isinstance(raw, bytes) and (elem.VR in (None, "IS")) and raw.strip(b" \x00").isdigit():
            return int(raw.strip(b" \x00"))  # a plain decimal IS, as pydicom would read it
        try:
            return int(getattr(self.dataset, key, default) or default)
        except (TypeError, ValueError):
            return default

    def get(self, key: str) -> str:
        """The value of keyword ``key`` as text ("" when absent or empty)."""
        fast = _ascii_text(self.dataset, key)
        if fast is not None:
            return fast
        return str(getattr(self.dataset, key, "") or "")


def _ascii_text(dataset, key: str) -> str | None:
    """``str(dataset.<key>)`` for a raw (not yet converted) single-valued ASCII text element, without pydicom's
    conversion; "" when the element is absent; None when pydicom must convert it."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(key)
    if tag is None:
        return None
    if tag not in dataset:
        return ""
    elem = dataset.get_item(tag)
    raw = getattr(elem, "value", None)
    if not isinstance(raw, bytes) or not hasattr(elem, "is_raw") or not elem.is_raw:
        return None
    vr = elem.VR or _dictionary_vr(dictionary_VR, tag)
    if vr not in _TEXT_VRS or b"\\" in raw or not raw.isascii():
        return None
    text = raw.decode("ascii").rstrip(" \x00")
    if text != text.strip() or not text.isprintable():
        return None  # leading blanks or control characters: pydicom's rules
    return text


def _dictionary_vr(lookup, tag: int) -> str | None:
    try:
        return lookup(tag)
    except KeyError:
        return None


def _read_deferred(dataset, f) -> list[int]:
    """Read every deferred value of ``dataset`` (and of its sequences' items) from ``f`` now, while it is open;
    values over :data:`VALUE_READ_LIMIT` are removed instead. Returns the removed tags."""
    from pydicom.dataelem import RawDataElement

    dropped = []
    for tag in list(dataset._dict):  # noqa: SLF001 - the raw elements, not converted ones
        elem = dataset._dict[tag]  # noqa: SLF001
        if isinstance(elem, RawDataElement):
            if elem.value is None and elem.length and elem.length != 0xFFFFFFFF:
                if elem.length > VALUE_READ_LIMIT:
                    del dataset._dict[tag]  # noqa: SLF001
                    dropped.append(int(tag))
                    continue
                f.seek(elem.value_tell)
                value = f.read(elem.length)
                if len(value) != elem.length:
                    raise EOFError("value cut short by the end of the file")
                dataset._dict[tag] = elem._replace(value=value)  # noqa: SLF001
        elif getattr(elem, "VR", None) == "SQ":
            for item in elem.value or []:
                dropped += _read_deferred(item, f)
    return dropped


def _looks_like_dicom_start(head: bytes) -> bool:
    if len(head) < 4:
        return False
    little = int.from_bytes(head[:2], "little")
    big = int.from_bytes(head[:2], "big")
    return little in _FIRST_GROUPS or big == 0x0008


def read_dicom_header(path: str | os.PathLike, max_read: int = HEADER_READ_LIMIT,
                      keywords: tuple[str, ...] | None = None) -> DicomHeader:
    """The header of ``path`` read within ``max_read`` bytes (module docstring); with ``keywords``, only those
    elements and the image size are kept.

    Raises:
        CadpipeInputError: not a DICOM file (no ``DICM`` marker and no DICOM element at the start, or no header
            within ``max_read`` bytes), a truncated/corrupt header, or an unreadable file (reason from the OS).
    """
    from pydicom.filereader import read_partial

    from cadpipe.transforms.readers.file_checks import os_error_reason

    path = os.fspath(path)
    seen_pixels = []
    tags = None
    if keywords is not None:
        from pydicom.datadict import tag_for_keyword

        tags = [t for t in (tag_for_keyword(k) for k in (*keywords, *_SIZE_KEYWORDS)) if t is not None]

    elements = [0]  # elements parsed, kept or not

    def at_pixels(tag, vr, length) -> bool:
        elements[0] += 1
        if int(tag) in _PIXEL_TAGS:
            seen_pixels.append(int(tag))
            return True
        return False

    try:
        with open(path, "rb") as f:
            head = f.read(132)
            if len(head) == 0:
                raise CadpipeInputError(path, "empty file (0 bytes), not a DICOM file")
            preamble = len(head) == 132 and head[128:132] == b"DICM"
            if not preamble and not _looks_like_dicom_start(head):
                raise CadpipeInputError(path, "not a DICOM file (no DICM marker and no DICOM data element at the "
                                              "start)")
            f.seek(0)
            bounded = _BoundedFile(f, max_read)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = read_partial(bounded, stop_when=at_pixels, defer_size=_DEFER, force=not preamble,
                                      specific_tags=tags)
                    dropped = _read_deferred(ds, bounded)
            except _OverBudget:
                raise CadpipeInputError(path, f"not a DICOM file (no DICOM header within the first "
                                              f"{max_read >> 20} MiB)") from None
            except CadpipeInputError:
                raise
            except OSError:
                raise
            except Exception as err:  # noqa: BLE001 - pydicom's parse errors: a broken header
                raise CadpipeInputError(path, f"truncated or corrupt DICOM header: {type(err).__name__}") from err
    except OSError as err:
        raise CadpipeInputError(path, os_error_reason(err)) from err
    if elements[0] == 0 and len(ds) == 0:
        raise CadpipeInputError(path, "not a DICOM file (no data elements could be read)")
    return DicomHeader(ds, bool(seen_pixels), path, tuple(dropped))
