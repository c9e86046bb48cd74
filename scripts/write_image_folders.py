"""Write a built-in dataset as image folders, as a user's own data would look.

    python scripts/write_image_folders.py fashion-mnist data/fashion-mnist-folders
    python scripts/write_image_folders.py fashion-mnist data/fashion-mnist-dicom --dicom

- ``private/<class>/train-NNNNN.png``: the train split, one folder per class (ImageFolder layout);
- ``public/test-NNNNN.png``: 9 000 test images, unlabelled (the student pool);
- ``test/<class>/test-NNNNN.png``: the other 1 000 test images, labelled, for evaluation only.

With ``--dicom`` the same folders hold ``.dcm`` files instead (needs pydicom: ``pip install
'pate[dicom]'``): Secondary Capture images, 16-bit MONOCHROME2 (colour data: RGB) stored as
``4 * pixel + 24`` with Rescale Slope 0.25, Intercept -6 and a window of 256 around 128, so pate's
DICOM reading (Modality LUT, then the file's window) gives back exactly the PNG pixels; each file
carries made-up patient identifiers (``Demo^Private00001``, ``DEMO-P00001``, ...) for checking
that none of them reaches a run's outputs.

The 9 000 / 1 000 split is a fixed random permutation (seed 0). The folder is written beside its
final name and renamed in one step, so an interrupted run leaves no half-written folder; an
existing complete folder is left as it is.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pate.data import DEFAULT_ROOT, builtin

POOL = 9000
FAKE_BIRTH_DATE = "19000101"  # made up, like the names


def folder_name(name: str) -> str:
    """A class name as a folder name ("T-shirt/top" -> "T-shirt-top")."""
    return name.replace("/", "-").replace(os.sep, "-")


def save_png(array: np.ndarray, path: Path, who: str) -> None:
    Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)).save(path.with_suffix(".png"))


def dicom_writer() -> Callable[[np.ndarray, Path, str], None]:
    """A function writing a (C, H, W) uint8 image as a DICOM file, with made-up identifiers ``who``."""
    try:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    except ImportError:
        raise SystemExit("--dicom needs pydicom 3: pip install 'pate[dicom]'") from None
    ds = Dataset()  # one dataset, its per-image fields set before each write
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality, ds.ConversionType = "OT", "WSD"
    ds.PatientBirthDate = FAKE_BIRTH_DATE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = "0.25", "-6"
    ds.WindowCenter, ds.WindowWidth = "128", "256"

    def save(array: np.ndarray, path: Path, who: str) -> None:
        colour = array.shape[0] == 3
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
        if colour:
            ds.PlanarConfiguration = 1  # the (C, H, W) planes as they are
        elif "PlanarConfiguration" in ds:
            del ds.PlanarConfiguration
        ds.Rows, ds.Columns = array.shape[1:]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = f"Demo^{who.title()}", f"DEMO-{who.upper()}"
        ds.PixelData = (array.astype("<u2") * 4 + 24).tobytes()
        ds.save_as(path.with_suffix(".dcm"), enforce_file_format=True)

    return save


def write_dataset(data, out: Path, *, dicom: bool = False, pool: int = POOL) -> None:
    """``data`` (a ``pate.data.Dataset``: private_x/y, public_x/y, classes) as folders under ``out``."""
    t0 = time.monotonic()
    save = dicom_writer() if dicom else save_png
    classes = [folder_name(c) for c in data.classes]
    order = np.random.default_rng(0).permutation(len(data.public_y))
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for c in classes:
        (staging / "private" / c).mkdir(parents=True)
        (staging / "test" / c).mkdir(parents=True)
    (staging / "public").mkdir()
    for i, (x, y) in enumerate(zip(data.private_x, data.private_y)):
        save(x, staging / "private" / classes[y] / f"train-{i:05d}", f"private{i:05d}")
    for rank, i in enumerate(order):
        if rank < pool:
            save(data.public_x[i], staging / "public" / f"test-{i:05d}", f"public{i:05d}")
        else:
            save(data.public_x[i], staging / "test" / classes[data.public_y[i]] / f"test-{i:05d}", f"test{i:05d}")
    staging.rename(out)
    print(f"{out}: {len(data.private_y)} private images in {len(classes)} class folders, {min(pool, len(order))} "
          f"unlabelled public, {max(len(order) - pool, 0)} labelled test{', as DICOM' if dicom else ''} "
          f"({time.monotonic() - t0:.0f} s)")


def write(dataset_name: str, out: Path, data_root: Path, dicom: bool = False) -> None:
    if out.is_dir():
        print(f"{out} exists; delete it to write it again")
        return
    write_dataset(builtin.load(dataset_name, data_root), out, dicom=dicom)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--dicom", action="store_true",
                        help="write .dcm files (with made-up patient identifiers) instead of .png")
    args = parser.parse_args()
    write(args.dataset, args.out, args.data_root, dicom=args.dicom)
    return 0


if __name__ == "__main__":
    sys.exit(main())
