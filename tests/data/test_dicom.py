"""DICOM in: `.dcm` files among the image folders, written here by pydicom itself (no downloads).

Windowing (Modality LUT, the file's or the config's VOI window, the pixel range), MONOCHROME1,
RGB, multi-frame refused or split, compressed syntaxes, hostile files (one line, exit 2, nothing
written), and patient identifiers that never reach any output."""
from __future__ import annotations

import io
import json
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pydicom = pytest.importorskip("pydicom", minversion="3")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (JPEGBaseline8Bit, JPEGLSLossless, ExplicitVRLittleEndian, RLELossless,  # noqa: E402
                         SecondaryCaptureImageStorage, generate_uid)

from pate import config as config_mod  # noqa: E402
from pate import data  # noqa: E402
from pate.cli import main  # noqa: E402
from pate.data import cache, dicom  # noqa: E402

from ..conftest import TINY_PIPELINE, edit_pipeline  # noqa: E402
from .conftest import blob  # noqa: E402

# Identifiers that must never reach an output: each is distinctive enough to grep for.
SECRETS = {"PatientName": "Zqxv^Hiddenname-7731", "PatientID": "PID-SECRET-99812", "PatientBirthDate": "19111111",
           "OtherPatientIDs": "OTHER-ID-55117", "InstitutionName": "Ward-Of-Secrets-4410",
           "ReferringPhysicianName": "Doctor^Qwertyleak-3391", "AccessionNumber": "ACC8842917",
           "StudyDescription": "Description-Leakcheck-1299"}
NEEDLES = [v.encode() for v in SECRETS.values()] + [b"Hiddenname-7731", b"Qwertyleak-3391"]


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", *, syntax=ExplicitVRLittleEndian,
                pixel_data: bytes | None = None, **tags) -> Path:
    """A Secondary Capture file holding ``pixels`` ((H, W), (F, H, W), or with a last axis of 3 for
    colour), every identifier of ``SECRETS`` and the extra ``tags``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    for key, value in SECRETS.items():
        setattr(ds, key, value)
    colour = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422")
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    shape = pixels.shape[:-1] if colour else pixels.shape
    if len(shape) == 3:
        ds.NumberOfFrames = shape[0]
    ds.Rows, ds.Columns = shape[-2:]
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixel_data if pixel_data is not None else pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp() -> np.ndarray:
    return (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 4)  # 0..1020


def linear(x, center, width):
    return np.rint(np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- pixels


def test_monochrome2_rescale_then_the_files_first_window(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", ramp(), RescaleSlope=2, RescaleIntercept=-100,
                       WindowCenter=[900, 10], WindowWidth=[1001, 5])
    [image] = dicom.decode(path)
    modality = ramp() * 2.0 - 100
    assert image.dtype == np.uint8 and image.shape == (16, 16)
    np.testing.assert_array_equal(image, linear(modality, 900, 1001))  # the first of the two windows
    assert image.min() == 0 and image.max() == 255


def test_without_a_window_the_pixel_range_and_monochrome1_inverted(tmp_path):
    [image] = dicom.decode(write_dicom(tmp_path / "a.dcm", ramp(), RescaleSlope=3, RescaleIntercept=7))
    expected = np.rint(ramp() / 1020 * 255).astype(np.uint8)  # min -> 0, max -> 255, after the rescale
    np.testing.assert_array_equal(image, expected)
    [inverted] = dicom.decode(write_dicom(tmp_path / "b.dcm", ramp(), "MONOCHROME1", RescaleSlope=3,
                                          RescaleIntercept=7))
    np.testing.assert_array_equal(inverted, 255 - expected)
    signed = ramp().astype(np.int16) - 500
    [image] = dicom.decode(write_dicom(tmp_path / "c.dcm", signed, WindowCenter=0, WindowWidth=200))
    np.testing.assert_array_equal(image, linear(signed.astype(float), 0, 200))


def test_the_config_window_overrides_the_files(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", ramp(), WindowCenter=100, WindowWidth=50)
    [own] = dicom.decode(path)
    [configured] = dicom.decode(path, dicom.Settings(window=(600.0, 401.0)))
    np.testing.assert_array_equal(own, linear(ramp().astype(float), 100, 50))
    np.testing.assert_array_equal(configured, linear(ramp().astype(float), 600, 401))
    [exact] = dicom.decode(write_dicom(tmp_path / "b.dcm", ramp(), WindowCenter=100, WindowWidth=50,
                                       VOILUTFunction="LINEAR_EXACT"))
    np.testing.assert_array_equal(exact, np.rint(np.clip((ramp() - 100.0) / 50 + 0.5, 0, 1) * 255).astype(np.uint8))


def test_rgb_as_it_is(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3)).astype(np.uint8)
    [image] = dicom.decode(write_dicom(tmp_path / "a.dcm", rgb, "RGB", WindowCenter=10, WindowWidth=2))
    np.testing.assert_array_equal(image, rgb)  # windows are for monochrome files only
    [wide] = dicom.decode(write_dicom(tmp_path / "b.dcm", rgb.astype(np.uint16) * 257, "RGB"))
    np.testing.assert_array_equal(wide, rgb)  # 16 bits stored, scaled to 8


def test_compressed_files_decode_with_their_plugin(tmp_path, caplog):
    import logging
    import warnings

    from PIL import Image

    yy, xx = np.mgrid[0:16, 0:16]
    smooth = np.stack([xx * 15, yy * 15, np.full_like(xx, 100)], -1).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(smooth).save(jpeg, format="JPEG", quality=95)
    reference = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())))
    path = write_dicom(tmp_path / "jpeg.dcm", smooth, "YBR_FULL_422", syntax=JPEGBaseline8Bit,
                       pixel_data=encapsulate([jpeg.getvalue()]))
    [image] = dicom.decode(path)  # Pillow is pydicom's JPEG Baseline plugin
    np.testing.assert_array_equal(image, reference)
    # pydicom warns (and logs) that an RGB file's JPEG says YBR: silenced, as every pydicom message
    # is (they may quote tag values)
    mislabelled = write_dicom(tmp_path / "rgb-jpeg.dcm", smooth, "RGB", syntax=JPEGBaseline8Bit,
                              pixel_data=encapsulate([jpeg.getvalue()]))
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        dicom.decode(mislabelled)
    assert not warned and not [r for r in caplog.records if r.name.startswith("pydicom")]
    ds = pydicom.dcmread(write_dicom(tmp_path / "plain.dcm", ramp()))
    ds.compress(RLELossless)  # RLE: pydicom's own codec
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(dicom.decode(tmp_path / "rle.dcm")[0], dicom.decode(tmp_path / "plain.dcm")[0])


# ----------------------------------------------------------------------------- folders


def write_dicom_folders(root: Path, private: int = 120, public: int = 60, test: int = 20, classes: int = 10,
                        seed: int = 0, multi_frame: int = 0) -> dict[str, np.ndarray]:
    """private/<class>/, public/, test/<class>/ of DICOM files: each a blob stored as 4 * blob + 24,
    Rescale Slope 0.25 and Intercept -6 and a window of 256 around 128 (so the file shows the blob
    itself), every 7th MONOCHROME1 (stored inverted); ``multi_frame`` private files of 3 frames (the
    third shifted). Returns the image each file should show (its first frame)."""
    rng = np.random.default_rng(seed)
    shown = {}
    for split, n in (("private", private), ("public", public), ("test", test)):
        for i in range(n):
            y = int(rng.integers(0, classes))
            folder = root / split / (f"class {y}" if split != "public" else f"lot {i % 2}")
            image = blob(y, rng)
            stored = image.astype(np.uint16) * 4 + 24
            photometric = "MONOCHROME1" if i % 7 == 6 else "MONOCHROME2"
            if photometric == "MONOCHROME1":
                stored = 1044 - image.astype(np.uint16) * 4  # 0.25 * stored - 6 = 255 - image
            if split == "private" and i < multi_frame:
                stored = np.stack([stored, stored, np.roll(stored, 1, axis=1)])
            path = write_dicom(folder / f"img_{i}.dcm", stored, photometric, RescaleSlope=0.25, RescaleIntercept=-6,
                               WindowCenter=128, WindowWidth=256)
            shown[str(path)] = image
    return shown


DICOM_PIPELINE = edit_pipeline(
    textwrap.dedent(TINY_PIPELINE), ('name = "tiny"', 'name = "dicom"'),
    ('dataset = "mnist"\nprivate_size = 600\nstudent_pool = 300\ntest_size = 100',
     'source = "folders"\nprivate_dir = "scans/private"\npublic_dir = "scans/public"\ntest_dir = "scans/test"'))


def pipeline(tmp_path, extra: str = "", **folders) -> Path:
    write_dicom_folders(tmp_path / "scans", **folders)
    path = tmp_path / "dicom.toml"
    path.write_text(DICOM_PIPELINE.replace('source = "folders"', f'source = "folders"\n{extra}'))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_dicom_folders_load_like_png_ones(tmp_path):
    shown = write_dicom_folders(tmp_path / "scans", private=40, public=20, test=10, classes=2)
    cfg = config_mod.load(pipeline(tmp_path, private=40, public=20, test=10, classes=2))
    ds = data.load(cfg.data, tmp_path / "data-root")
    assert ds.private_x.shape == (40, 1, 28, 28) and ds.num_pool == 20 and len(ds.public_y) == 30
    name, digest = ds.files["private"][0]
    assert name.endswith(".dcm") and len(digest) == 64
    # rescaled and windowed, each file shows its blob (a MONOCHROME1 one inverted back)
    for i, (name, _) in enumerate(ds.files["private"]):
        np.testing.assert_array_equal(ds.private_x[i, 0], shown[name])
    for i, (name, _) in enumerate(ds.files["public"] + ds.files["test"]):
        np.testing.assert_array_equal(ds.public_x[i, 0], shown[name])
    assert [ds.classes[y] for y in ds.private_y] == [Path(n).parent.name for n, _ in ds.files["private"]]
    again = data.load(cfg.data, tmp_path / "data-root")  # from the cache
    np.testing.assert_array_equal(again.private_x, ds.private_x)


def test_the_cache_is_keyed_by_the_dicom_settings(tmp_path, monkeypatch):
    path = pipeline(tmp_path, private=20, public=10, test=4, classes=2)
    cfg = config_mod.load(path)
    first = data.load(cfg.data, tmp_path / "data-root")
    path.write_text(path.read_text().replace('source = "folders"', 'source = "folders"\ndicom_window = [40, 30]'))
    windowed = config_mod.load(path)
    calls, keys = [], []
    real_decode, real_key = data.images.decode, cache.key_of
    monkeypatch.setattr(data.images, "decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    monkeypatch.setattr(cache, "key_of", lambda parts, settings: keys.append(settings) or real_key(parts, settings))
    other = data.load(windowed.data, tmp_path / "data-root")
    assert calls and not np.array_equal(other.private_x, first.private_x)  # decoded afresh, not the old arrays
    assert keys[-1]["dicom_window"] == [40.0, 30.0] and keys[-1]["dicom_frames"] == "refuse"
    assert windowed.fingerprint() != cfg.fingerprint()
    # PNG-only folders keep the cache key they always had: no DICOM settings in it
    from PIL import Image

    for split in ("private/a", "private/b", "public"):
        (tmp_path / "png" / split).mkdir(parents=True)
        Image.fromarray(blob(len(split), np.random.default_rng(len(split)))).save(tmp_path / "png" / split / "x.png")
    data.folders.load("png", tmp_path / "png" / "private", tmp_path / "png" / "public", None,
                      root=tmp_path / "data-root", classes=("a", "b"))
    assert keys[-1] == {"image_size": 28, "channels": 1}


def test_multi_frame_refused_or_split(tmp_path):
    path = pipeline(tmp_path, private=30, public=12, test=6, classes=2, multi_frame=2)
    result = invoke("run", path, "--run-dir", tmp_path / "run", "--data-root", tmp_path / "data-root", "-q")
    assert result.exit_code == 2 and "img_0.dcm is a multi-frame DICOM file" in result.output, result.output
    assert 'dicom_frames = "split"' in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    path.write_text(path.read_text().replace('source = "folders"', 'source = "folders"\ndicom_frames = "split"'))
    ds = data.load(config_mod.load(path).data, tmp_path / "data-root")
    assert len(ds.private_y) == 30 + 2 * 2  # two files of 3 frames: 6 records for 2 files
    names = [n for n, _ in ds.files["private"]]
    frames = [n for n in names if "#frame=" in n]
    assert len(frames) == 6 and frames[0].endswith("img_0.dcm#frame=1") and frames[2].endswith("#frame=3")
    hashes = [h for _, h in ds.files["private"]]
    assert len(set(hashes)) == len(hashes)  # each frame a record of its own
    first = names.index(frames[0])
    np.testing.assert_array_equal(ds.private_x[first], ds.private_x[first + 1])  # frames 1 and 2 are the same
    assert not np.array_equal(ds.private_x[first], ds.private_x[first + 2])
    assert len(set(ds.private_y[first:first + 3].tolist())) == 1  # the file's label on each frame


def test_config_keys_are_validated_and_keep_old_fingerprints():
    base = {"name": "d", "data": {"source": "folders", "private_dir": "/p", "public_dir": "/q"}}
    plain = config_mod.from_dict(base)
    assert plain.data.dicom_window == () and plain.data.dicom_frames == "refuse"
    assert "dicom_window" not in plain.canonical_dict()["data"]  # a run started before these keys keeps its fingerprint
    for bad, match in (({"dicom_window": [1.0]}, "[data] dicom_window must be"),
                       ({"dicom_window": [40.0, 0.5]}, "[data] dicom_window must be"),
                       ({"dicom_window": ["a", 1]}, "[data] dicom_window must be"),
                       ({"dicom_frames": "each"}, "[data] dicom_frames must be one of ['refuse', 'split']")):
        with pytest.raises(config_mod.ConfigError, match=match.replace("[", r"\[").replace("]", r"\]")):
            config_mod.from_dict({**base, "data": {**base["data"], **bad}})
    with pytest.raises(config_mod.ConfigError, match=r"\[data\] dicom_frames must be left out unless source"):
        config_mod.from_dict({"name": "d", "data": {"dicom_frames": "split"}})
    windowed = config_mod.from_dict({**base, "data": {**base["data"], "dicom_window": [40, 400]}})
    assert windowed.data.dicom_window == (40.0, 400.0)
    assert config_mod.from_dict(tomllib.loads(config_mod.to_toml(windowed))) == windowed


# ----------------------------------------------------------------------------- hostile files


def _not_dicom(root):
    (root / "public" / "lot 0" / "fake.dcm").write_bytes(b"this is a text file, not DICOM\n" * 20)


def _no_pixels(root):
    path = root / "public" / "lot 0" / "nopix.dcm"
    ds = pydicom.dcmread(next((root / "public").rglob("*.dcm")))
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)


def _jpeg_garbage(root):
    write_dicom(root / "private" / "class 0" / "broken.dcm", np.zeros((16, 16, 3), np.uint8), "YBR_FULL_422",
                syntax=JPEGBaseline8Bit, pixel_data=encapsulate([b"\xff\xd8" + b"\x13\x37" * 40 + b"\xff\xd9"]))


def _truncated(root):
    path = root / "test" / "class 1" / "img_4.dcm"
    path.write_bytes(path.read_bytes()[:300])


def _short_pixels(root):
    path = root / "public" / "lot 1" / "img_3.dcm"
    path.write_bytes(path.read_bytes()[:-100])


def _palette(root):
    write_dicom(root / "public" / "lot 1" / "palette.dcm", np.zeros((16, 16), np.uint8), "PALETTE COLOR")


HOSTILE = {
    "not DICOM": (_not_dicom, "fake.dcm is not a DICOM file"),
    "no pixel data": (_no_pixels, "nopix.dcm is a DICOM file without Pixel Data (7FE0,0010)"),
    "damaged compressed data": (_jpeg_garbage, "broken.dcm: its DICOM pixel data cannot be decoded"),
    "truncated header": (_truncated, "img_4.dcm is a DICOM file without Pixel Data (7FE0,0010): not an image, or "
                                     "truncated"),
    "truncated pixel data": (_short_pixels, "img_3.dcm: its DICOM pixel data cannot be decoded"),
    "palette colour": (_palette, "palette.dcm: DICOM Photometric Interpretation 'PALETTE COLOR' is not supported"),
}


def _refused(tmp_path, change, match):
    path = pipeline(tmp_path, private=30, public=12, test=6, classes=2)
    change(tmp_path / "scans")
    result = invoke("run", path, "--run-dir", tmp_path / "run", "--data-root", tmp_path / "data-root", "-q")
    assert result.exit_code == 2 and match in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
    assert not any(needle in result.output.encode() for needle in NEEDLES)
    return result.output


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_dicom_is_one_line_and_nothing_written(case, tmp_path):
    change, match = HOSTILE[case]
    _refused(tmp_path, change, match)


def test_compressed_without_its_plugin_names_the_file_and_the_plugin(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS plugin is installed here")

    def jpeg_ls(root):
        write_dicom(root / "private" / "class 1" / "jls.dcm", np.zeros((16, 16), np.uint8), syntax=JPEGLSLossless,
                    pixel_data=encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 40 + b"\xff\xd9"]))

    output = _refused(tmp_path, jpeg_ls, "jls.dcm is compressed (JPEG-LS Lossless Image Compression) and no "
                                         "installed plugin decodes it")
    assert "pylibjpeg" in output


def test_without_pydicom_a_dicom_file_is_one_line(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pydicom(name, *args, **kwargs):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    path = write_dicom(tmp_path / "x.dcm", ramp())
    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    with pytest.raises(data.DataError, match=r"x.dcm is a DICOM file: reading it needs pydicom 3 \(pip install "):
        dicom.decode(path)


# ----------------------------------------------------------------------------- identifiers


def _leaks(folder: Path) -> list[str]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = path.read_bytes()
        found += [f"{path}: {needle.decode()}" for needle in NEEDLES if needle in content]
    return found


def test_patient_identifiers_reach_no_output(tmp_path, capfd):
    """Partition to export on DICOM folders (one split multi-frame file among them): no identifier in
    any file written (the run directory, the release and export folders, the decode cache under the
    data root, the spend log) nor in any command's output, stdout and stderr, warnings and logs."""
    path = pipeline(tmp_path, 'dicom_frames = "split"', private=120, public=60, test=24, classes=4, multi_frame=1)
    scans = tmp_path / "scans"
    assert _leaks(scans)  # the identifiers are there to be leaked
    env = {"PATE_SPEND_DIR": str(tmp_path / "spend")}
    args = ["--run-dir", tmp_path / "run", "--data-root", tmp_path / "data-root"]
    outputs = []
    for command in (["run", path, *args], ["status", tmp_path / "run"], ["audit", tmp_path / "run"],
                    ["report", tmp_path / "run", "--out", tmp_path / "report"],
                    ["export", tmp_path / "run", "--out", tmp_path / "export"]):
        result = CliRunner(env=env).invoke(main, [str(a) for a in command])
        assert result.exit_code == 0, (command, result.output)
        outputs.append(result.output)
    captured = capfd.readouterr()
    outputs += [captured.out, captured.err]
    assert (tmp_path / "export" / "labels.csv").exists() and (tmp_path / "run-release").is_dir()
    assert (tmp_path / "data-root" / "cache" / cache.INDEX).exists()
    leaks = [f"output: {n.decode()}" for text in outputs for n in NEEDLES if n in text.encode()]
    for folder in sorted(p for p in tmp_path.iterdir() if p.is_dir() and p != scans):
        leaks += _leaks(folder)
    assert not leaks, leaks
    recorded = json.loads((tmp_path / "run" / "data.json").read_text())
    assert any("#frame=2" in name for name, _ in recorded["files"]["private"])


# ----------------------------------------------------------------------------- the folder demo's writer


def test_the_demo_writes_the_same_folders_as_dicom(tmp_path):
    """scripts/write_image_folders.py --dicom (the DICOM folder demo) on a few synthetic images: the
    same layout as the PNG folders, decoded by pate to the same pixels, made-up names in the files."""
    import importlib.util
    from types import SimpleNamespace

    script = Path(__file__).resolve().parents[2] / "scripts" / "write_image_folders.py"
    spec = importlib.util.spec_from_file_location("write_image_folders", script)
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    rng = np.random.default_rng(5)
    labels, public_labels = rng.integers(0, 3, 24), rng.integers(0, 3, 16)
    fake = SimpleNamespace(private_x=np.stack([blob(y, rng)[None] for y in labels]), private_y=labels,
                           public_x=np.stack([blob(y, rng)[None] for y in public_labels]), public_y=public_labels,
                           classes=("T-shirt/top", "Trouser", "Bag"))
    loaded = {}
    for kind in ("png", "dicom"):
        writer.write_dataset(fake, tmp_path / kind, dicom=kind == "dicom", pool=10)
        files = sorted(str(p.relative_to(tmp_path / kind)) for p in (tmp_path / kind).rglob("*") if p.is_file())
        loaded[kind] = (files, data.folders.load(kind, tmp_path / kind / "private", tmp_path / kind / "public",
                                                 tmp_path / kind / "test", root=tmp_path / "data-root"))
    png_files, png = loaded["png"]
    dcm_files, dcm = loaded["dicom"]
    assert [f.replace(".png", ".dcm") for f in png_files] == dcm_files  # the same layout, the same names
    assert any(f.startswith("private/T-shirt-top/train-") for f in dcm_files)
    assert len(dcm_files) == 40 and sum(f.startswith("test/") for f in dcm_files) == 6
    np.testing.assert_array_equal(dcm.private_x, png.private_x)
    np.testing.assert_array_equal(dcm.public_x, png.public_x)
    np.testing.assert_array_equal(dcm.private_y, png.private_y)
    ds = pydicom.dcmread(next((tmp_path / "dicom" / "private").rglob("*.dcm")))
    assert str(ds.PatientName).startswith("Demo^Private") and ds.PatientID.startswith("DEMO-PRIVATE")


def test_the_frames_of_a_split_private_file_are_one_record_for_privacy():
    from pate.data import records
    from pate.stages.partition import record_names

    class Config:
        class data:
            source, private_file = "folders", ""

    class Data:
        private_x = np.zeros((3, 1, 8, 8), np.uint8)
        private_y = np.array([2, 2, 2])
        files = {"private": [["a.dcm#frame=1", "ab" * 32 + "#frame=1"], ["a.dcm#frame=2", "ab" * 32 + "#frame=2"],
                             ["b.dcm", "cd" * 32]]}

    names = record_names(Config, Data)
    assert names[0] == names[1] != names[2]  # one teacher and one spend for the file's frames
    digests = records.shard_digests(bytes(32), names, 0)
    assert records.assign(digests, 5, 1.0)[0] == records.assign(digests, 5, 1.0)[1]


def test_split_frames_are_refused_with_private_knn():
    from pate import config as config_mod

    with pytest.raises(config_mod.ConfigError, match="dicom_frames"):
        config_mod.from_dict({"name": "x", "data": {"source": "folders", "private_dir": "p", "public_dir": "q",
                                                    "dicom_frames": "split"},
                              "teachers": {"features": "scattering"}, "aggregator": {"mechanism": "private-knn"}})
