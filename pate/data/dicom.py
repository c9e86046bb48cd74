"""DICOM files (``.dcm``, ``.dicom``) as 8-bit images, for ``[data] source = "folders"``.

Needs pydicom 3 (``pip install 'pate[dicom]'``). Each file goes through the standard grayscale
pipeline (DICOM PS3.3 C.11, "Grayscale Image Consistency"), then becomes an ordinary 8-bit image
that is converted and resized like any PNG:

- ``MONOCHROME2`` and ``MONOCHROME1``: the Modality LUT first (Rescale Slope and Intercept, or a
  Modality LUT Sequence), then a VOI window mapped to 0..255:

  1. ``[data] dicom_window = [center, width]`` when set: every monochrome file, the same window,
     LINEAR (it overrides the files' own);
  2. else the file's Window Center / Window Width (the first value where several are given), with
     its VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID; other values are taken as LINEAR);
  3. else (no window in the file, or an unusable one: width below 1) the range of the file's own
     pixels: its minimum (over every frame) becomes 0, its maximum 255 (a constant file is all 0).

  A VOI LUT Sequence is not applied. ``MONOCHROME1`` (low values bright) is inverted after the
  window, so every image is dark-is-low.
- ``RGB`` (and ``YBR_FULL`` / ``YBR_FULL_422``, which pydicom converts to RGB): taken as they are,
  scaled from Bits Stored to 8 bits; windows apply to monochrome files only. Any other Photometric
  Interpretation (PALETTE COLOR, ...) is refused.
- Multi-frame files: ``[data] dicom_frames = "refuse"`` (the default) refuses them, naming the
  file; ``"split"`` makes every frame a record of its own (``scan.dcm#frame=2``, 1-based). Split a
  private study and its frames are separate private records: the guarantee protects one record,
  that is ONE FRAME, so a patient whose study has 40 frames is 40 records and is protected only as
  40 records are (a group guarantee, far weaker). Split private files only where one frame is one
  individual's whole contribution, or keep one frame per file and per person.
- Compressed transfer syntaxes are decoded by the decoder plugins pydicom finds (RLE always,
  JPEG Baseline and JPEG 2000 through Pillow; JPEG-LS, JPEG Lossless, HTJ2K need pylibjpeg and
  its plugins or gdcm); without one, the file is refused in one line naming the plugins to install.

Patient identifiers never leave this module: no tag value (a name, an id, a date, any text) is
put in a message, a log line, a warning or the cache; messages name the file's path only, and
pydicom's own warnings and log lines are silenced while a file is read (they may quote values).
A file that is not DICOM (no "DICM" header), has no Pixel Data, or cannot be decoded is refused in
one line naming it.

Hostile files end in one line too, before the code that would hang or fill the memory runs: a
Deflated Explicit VR Little Endian file is inflated by pate first, a bounded amount at a time, and
refused once it passes ``MAX_INFLATED`` bytes (a few hundred KB may inflate to gigabytes; pydicom
would inflate it whole); a JPEG 2000 frame in a JP2 wrapper has its box structure checked before
any decoder sees it (a box of length 0 or 1 before the codestream box made pydicom's box walk loop
forever); a Rescale Slope or Rescale Intercept that is not a finite number is refused, naming the
tag (never its value). ``pate.data.images`` puts a time limit on every file's decoding as a second
guard.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..io import read_bytes_limited
from .dataset import DataError

SUFFIXES = {".dcm", ".dicom"}
DECODER_VERSION = 1  # part of the decoded-image cache key of folders holding DICOM files
MAX_SAMPLES = 2**28  # samples of one file (rows x columns x frames x samples per pixel): 512 MiB at 16 bits
# A deflated dataset inflated beyond the largest Pixel Data decoded (MAX_SAMPLES at 16 bits) and
# 16 MiB of other attributes is refused while it is inflated.
MAX_INFLATED = 2 * MAX_SAMPLES + (16 << 20)
MAX_FILE_BYTES = 4 * MAX_SAMPLES + (16 << 20)  # a file read whole: MAX_SAMPLES at 32 bits, uncompressed
INFLATE_STEP = 1 << 24  # bytes inflated at a time
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "  # the first box of a JP2 file (how pydicom recognises one)
SUPPORTED = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"}
KNOWN = SUPPORTED | {"PALETTE COLOR", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT", "HSV", "ARGB", "CMYK"}
FRAME_MARK = "#frame="


@dataclass(frozen=True)
class Settings:
    """How DICOM files become images: ``[data] dicom_window`` (() = each file's own) and
    ``[data] dicom_frames``."""
    window: tuple[float, ...] = ()
    frames: str = "refuse"

    def key(self) -> dict:
        """What the decoded-image cache key holds of these settings."""
        return {"dicom_decoder": DECODER_VERSION, "dicom_window": [float(v) for v in self.window],
                "dicom_frames": self.frames}


def is_dicom(path) -> bool:
    return str(path).lower().endswith(tuple(SUFFIXES))


def frame_name(name: str, frame: int) -> str:
    """The record name of frame ``frame`` (1-based) of the file ``name``."""
    return f"{name}{FRAME_MARK}{frame}"


def _pydicom(name):
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401
    except ImportError:
        raise DataError(f"{name} is a DICOM file: reading it needs pydicom 3 (pip install 'pate[dicom]')") from None
    return pydicom


@contextlib.contextmanager
def _quiet():
    """pydicom's warnings and log lines (its own logger and those below it) silenced: they may
    quote a tag's value."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _read(data: bytes, name):
    """The parsed dataset of the bytes ``data`` of the file ``name``."""
    pydicom = _pydicom(name)
    from pydicom.errors import InvalidDicomError

    try:
        _check_inflated_size(data, name)
        return pydicom.dcmread(io.BytesIO(data))
    except DataError:
        raise
    except InvalidDicomError:
        raise DataError(f"{name} is not a DICOM file (no 'DICM' file header); remove it or give it another "
                        "suffix") from None
    except MemoryError:
        raise DataError(f"{name} is too large to read in memory; shrink or remove it") from None
    except Exception:  # noqa: BLE001 — pydicom's errors may quote tag values: none is shown
        raise DataError(f"{name} is a damaged DICOM file (it cannot be parsed); remove or replace it") from None


def _check_inflated_size(data: bytes, name) -> None:
    """A Deflated Explicit VR Little Endian file inflated here first, ``INFLATE_STEP`` bytes at a
    time and nothing kept, refused once it passes ``MAX_INFLATED`` bytes: pydicom inflates the
    whole dataset at once, so a small file could fill the memory. Other files pass untouched."""
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    handle = io.BytesIO(data)
    read_preamble(handle, False)  # no "DICM": InvalidDicomError, as dcmread says it
    meta = _read_file_meta_info(handle)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
    pending = memoryview(data)[handle.tell():]
    try:
        while pending and not inflater.eof:
            size += len(inflater.decompress(pending, INFLATE_STEP))
            if size > MAX_INFLATED:
                raise DataError(f"{name} is refused: its deflated DICOM data inflates to more than "
                                f"{MAX_INFLATED >> 20} MiB, a possible decompression bomb; shrink or remove it")
            pending = memoryview(inflater.unconsumed_tail)
    except zlib.error:
        raise DataError(f"{name} is a damaged DICOM file (its deflated data cannot be inflated); remove or "
                        "replace it") from None


def _int(ds, keyword: str, default: Optional[int] = None) -> Optional[int]:
    try:
        value = ds.get(keyword, default)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _photometric(ds, name) -> str:
    value = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if value not in SUPPORTED:
        shown = repr(value) if value in KNOWN else "a value"  # a defined term, never free text
        raise DataError(f"{name}: DICOM Photometric Interpretation {shown} is not supported (MONOCHROME1, "
                        "MONOCHROME2, RGB or YBR_FULL); convert the file or remove it")
    return value


def _check_decoder(ds, name) -> None:
    """Refuse a transfer syntax that no installed plugin decodes, naming the plugins to install."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if not uid:
        raise DataError(f"{name}: the DICOM file names no Transfer Syntax UID (0002,0010); it cannot be decoded")
    known, decoder = False, None
    try:
        known = bool(uid.is_transfer_syntax)  # a private UID raises ValueError
        decoder = get_decoder(uid) if known else None
    except (NotImplementedError, ValueError, TypeError):
        decoder = None
    if decoder is None:
        shown = repr(uid.name) if known else "an unknown one"
        raise DataError(f"{name}: DICOM transfer syntax {shown} has no pixel decoder in pydicom; convert the file "
                        "to an uncompressed or a supported compressed syntax")
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise DataError(f"{name} is compressed ({uid.name}) and no installed plugin decodes it; install one of "
                        f"the plugins pydicom names ({missing}), or convert the file to an uncompressed syntax")


def header(data: bytes, name) -> dict:
    """The file's facts, as ``cache.file_facts`` records them: width, height, bands (1 or 3) and
    frames. Refused (one line naming ``name``): not DICOM, no Pixel Data, an unsupported
    Photometric Interpretation, no decoder for its transfer syntax, too many pixels."""
    with _quiet():
        facts = _inspect(_read(data, name), name)
    del facts["monochrome1"]
    return facts


def _inspect(ds, name) -> dict:
    if "PixelData" not in ds:
        raise DataError(f"{name} is a DICOM file without Pixel Data (7FE0,0010): not an image, or truncated; "
                        "remove or replace it")
    photometric = _photometric(ds, name)
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    samples, frames = _int(ds, "SamplesPerPixel", 1), _int(ds, "NumberOfFrames", 1)
    bands = 1 if photometric.startswith("MONOCHROME") else 3
    if not (rows and columns and rows > 0 and columns > 0 and samples == bands and frames and frames > 0):
        raise DataError(f"{name}: the DICOM image attributes (Rows, Columns, Samples per Pixel, Number of Frames) "
                        "are missing or inconsistent; the file is damaged")
    _check_pixel_count(rows * columns, rows * columns * frames * samples, name)
    _check_rescale(ds, name)
    _check_decoder(ds, name)
    return {"width": columns, "height": rows, "bands": bands, "frames": frames,
            "monochrome1": photometric == "MONOCHROME1"}


RESCALE_TAGS = {"RescaleSlope": "Rescale Slope (0028,1053)", "RescaleIntercept": "Rescale Intercept (0028,1052)"}


def _check_rescale(ds, name) -> None:
    """Rescale Slope and Rescale Intercept, where present, must be finite numbers: pydicom applies
    them only when both are there (and never with a Modality LUT Sequence), so a NaN or an infinity
    would otherwise pass unseen. The message names the tag, never its value."""
    for keyword, tag in RESCALE_TAGS.items():
        if keyword not in ds:
            continue
        try:
            value = ds[keyword].value
            fine = value is not None and value != "" and math.isfinite(float(value))
        except (TypeError, ValueError, OverflowError, KeyError):
            fine = False
        if not fine:
            raise DataError(f"{name}: its DICOM {tag} is not a finite number; the file is damaged: fix the tag or "
                            "remove the file")


def _check_pixel_count(per_frame: int, total: int, name) -> None:
    from PIL import Image

    if (Image.MAX_IMAGE_PIXELS and per_frame > Image.MAX_IMAGE_PIXELS) or total > MAX_SAMPLES:
        raise DataError(f"{name} is refused: too many pixels to decode safely, a possible decompression bomb; "
                        "shrink or remove it")


def _window(ds, settings: Settings) -> Optional[tuple[float, float, str]]:
    """(center, width, function) of the window in use, or None for the pixel range."""
    if settings.window:
        return float(settings.window[0]), float(settings.window[1]), "LINEAR"
    try:
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is None or width is None or center == "" or width == "":
            return None
        center, width = _first(center), _first(width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if not (np.isfinite(center) and np.isfinite(width) and width >= 1):
        return None
    return center, width, function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR"


def _first(value) -> float:
    """A numeric tag's value, the first where it holds several (a MultiValue)."""
    from pydicom.multival import MultiValue

    return float(value[0]) if isinstance(value, (MultiValue, list, tuple)) else float(value)


def apply_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Modality values -> [0, 255] float (PS3.3 C.11.2.1.2)."""
    x = np.asarray(x, dtype=np.float64)
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        y = (x - center) / width + 0.5
    elif width == 1:
        y = (x >= center - 0.5).astype(np.float64)  # a width of 1 is a threshold
    else:
        y = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0.0, 1.0) * 255.0


def _to_uint8(y: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(y, 0, 255)).astype(np.uint8)


def decode(path, settings: Settings = Settings(), data: Optional[bytes] = None) -> list[np.ndarray]:
    """The file's frames as uint8 arrays, (H, W) for monochrome and (H, W, 3) for colour; one
    unless ``settings.frames == "split"``. Every failure is one ``DataError`` naming ``path``."""
    name = str(path)
    if data is None:
        data = read(path)
    with _quiet():
        return _decode(data, name, settings)


def read(path) -> bytes:
    """The bytes of the DICOM file ``path``: a regular file of at most ``MAX_FILE_BYTES`` (a FIFO or
    a device would block or never end), every failure one line naming it."""
    try:
        return read_bytes_limited(path, MAX_FILE_BYTES, "DICOM file")
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None


def _check_jpeg2000(ds, name: str, frames: int) -> None:
    """Every JPEG 2000 frame as pydicom will hand it to its decoders, checked first: a frame in a
    JP2 wrapper must be a chain of boxes of at least 8 bytes each up to the contiguous codestream
    box (``jp2c``). pydicom walks the boxes by their 4-byte lengths until it finds that box, so a
    box of length 0 (legal only for the last box) would keep it in one place forever, and one of
    length 1 (a 64-bit length, never needed in a DICOM frame) would send it astray."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEG2000TransferSyntaxes

    if ds.file_meta.TransferSyntaxUID not in JPEG2000TransferSyntaxes:
        return
    try:
        extended = None
        if "ExtendedOffsetTable" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        encoded = list(generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=extended))
    except Exception:  # noqa: BLE001 — pydicom's errors may quote the data: none is shown
        raise DataError(f"{name}: its DICOM pixel data cannot be decoded (damaged or truncated); remove or "
                        "replace it") from None
    for frame in encoded:
        if not frame.startswith(JP2_SIGNATURE):
            continue  # a bare codestream: no boxes
        offset = 0
        while True:
            if offset + 8 > len(frame):
                raise DataError(f"{name}: its JPEG 2000 data has no codestream box (jp2c); the file is damaged "
                                "or hostile: remove or replace it")
            if frame[offset + 4:offset + 8] == b"jp2c":
                break
            length = int.from_bytes(frame[offset:offset + 4], "big")
            if length < 8:
                raise DataError(f"{name}: its JPEG 2000 data holds a box of length {length} before the codestream "
                                "(a decoder would loop on it forever); the file is damaged or hostile: remove or "
                                "replace it")
            offset += length


def _decode(data: bytes, name: str, settings: Settings) -> list[np.ndarray]:
    ds = _read(data, name)
    facts = _inspect(ds, name)
    if facts["frames"] > 1 and settings.frames != "split":
        raise DataError(f"{name} is a multi-frame DICOM file; set [data] dicom_frames = \"split\" to make each "
                        "frame a record of its own, or store one frame per file")
    from pydicom.pixels import apply_modality_lut

    _check_jpeg2000(ds, name, facts["frames"])
    try:
        pixels = ds.pixel_array
    except MemoryError:
        raise DataError(f"{name} is too large to decode in memory; shrink or remove it") from None
    except Exception:  # noqa: BLE001 — a codec's error may quote the data: none is shown
        raise DataError(f"{name}: its DICOM pixel data cannot be decoded (damaged or truncated); remove or "
                        "replace it") from None
    colour = facts["bands"] == 3
    expected = (facts["height"], facts["width"]) + ((3,) if colour else ())
    pixels = np.asarray(pixels)
    if pixels.shape == expected:
        pixels = pixels[None]
    if pixels.shape != (facts["frames"], *expected):
        raise DataError(f"{name}: its DICOM pixel data does not match its Rows, Columns and Number of Frames; "
                        "the file is damaged")
    if colour:
        bits = _int(ds, "BitsStored") or 8
        if pixels.dtype == np.uint8 or bits <= 8:
            return [np.ascontiguousarray(f, dtype=np.uint8) for f in pixels]
        scale = 255.0 / float(2 ** min(bits, 32) - 1)
        return [_to_uint8(f.astype(np.float64) * scale) for f in pixels]
    try:
        values = [np.asarray(apply_modality_lut(f, ds), dtype=np.float64) for f in pixels]
    except Exception:  # noqa: BLE001
        raise DataError(f"{name}: its DICOM Modality LUT (Rescale Slope/Intercept) cannot be applied; the file "
                        "is damaged") from None
    if not all(np.isfinite(v).all() for v in values):
        raise DataError(f"{name}: its DICOM Modality LUT (Rescale Slope/Intercept) gives values that are not "
                        "finite; the file is damaged")
    window = _window(ds, settings)
    if window is None:
        low = min(float(v.min()) for v in values)
        high = max(float(v.max()) for v in values)
        frames = [(v - low) * (255.0 / (high - low)) if high > low else np.zeros_like(v) for v in values]
    else:
        frames = [apply_window(v, *window) for v in values]
    return [255 - _to_uint8(f) if facts["monochrome1"] else _to_uint8(f) for f in frames]
