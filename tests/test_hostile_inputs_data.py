"""Hostile image files and a damaged decode cache (issue 31): each ends as one line naming the
file (exit 2), or is taken and read right; nothing hangs, fills the memory or prints a traceback.

- a JPEG 2000 DICOM whose JP2 boxes hold one of length 0 (pydicom's box walk looped forever), in
  `pate partition` and `pate predict`; every file's decoding has a time limit besides;
- a Deflated Explicit VR Little Endian DICOM that inflates past the limit;
- public photos of thousands of pixels (or 1 x 100000) when `image_size` is inferred;
- a damaged decode cache (index and arrays): a miss, decoded again;
- Ctrl-C while the decoding pool runs: one KeyboardInterrupt, nothing from the workers;
- an unreadable image named by its path (not `<_io.BytesIO object at 0x...>`);
- a NaN or infinite Rescale Slope / Intercept: refused naming the tag, never its value.
"""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pate import config as config_mod
from pate import data
from pate.cli import main
from pate.data import cache, dicom, folders, images

from .data.conftest import FOLDERS_PIPELINE, write_folders

pydicom = pytest.importorskip("pydicom", minversion="3")

from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless  # noqa: E402

from .data.test_dicom import pipeline as dicom_pipeline  # noqa: E402
from .data.test_dicom import ramp, write_dicom  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    return result.output


def partition(pipeline: Path, tmp_path: Path):
    return invoke("partition", pipeline, "--run-dir", tmp_path / "run", "--data-root", tmp_path / "data-root", "-q")


@pytest.fixture
def deadline():
    """An alarm that fails the test instead of letting a hang hang the suite (before the fix)."""
    def expired(signum, frame):
        raise AssertionError("still running after the test's deadline: it hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 30)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def write_student(folder: Path, channels: int = 1, size: int = 16) -> Path:
    """A safetensors student (cnn-small, 10 classes): `pate predict` with no export needed."""
    import torch  # noqa: F401
    from safetensors.torch import save

    from pate.export.formats import describe
    from pate.nets.models import build_model

    meta = describe("cnn-small", [str(k) for k in range(10)], channels, size, [0.5] * channels, [0.25] * channels)
    weights = {k: v.contiguous() for k, v in build_model("cnn-small", channels, 10, size).state_dict().items()}
    path = folder / "student.safetensors"
    path.write_bytes(save(weights, {"pate.json": json.dumps(meta)}))
    return path


# ----------------------------------------------------------------------------- 1. JPEG 2000: a box of length 0


def jp2_with_a_zero_length_box(image: np.ndarray) -> bytes:
    """A JP2 file whose header box is followed by a box of length 0 (then the codestream)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG2000")
    jp2 = buffer.getvalue()
    offset = 0
    while jp2[offset + 4:offset + 8] != b"jp2h":
        offset += int.from_bytes(jp2[offset:offset + 4], "big")
    offset += int.from_bytes(jp2[offset:offset + 4], "big")  # just after the JP2 header box
    return jp2[:offset] + struct.pack(">I4s", 0, b"uuid") + jp2[offset:]


def test_a_jpeg2000_box_of_length_zero_is_one_line_in_partition_and_predict(tmp_path, deadline):
    image = ramp().astype(np.uint8)
    bad = jp2_with_a_zero_length_box(image)
    path = dicom_pipeline(tmp_path, private=20, public=8, test=4, classes=2)
    hostile = write_dicom(tmp_path / "scans" / "public" / "lot 0" / "zero-box.dcm", image, syntax=JPEG2000Lossless,
                          pixel_data=encapsulate([bad]))
    one_line(partition(path, tmp_path), "zero-box.dcm: its JPEG 2000 data holds a box of length 0")
    assert not (tmp_path / "run").exists()
    student = write_student(tmp_path)
    one_line(invoke("predict", student, hostile, "-q"), "zero-box.dcm: its JPEG 2000 data holds a box of length 0")
    # the same image, well formed, is read
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG2000")
    good = write_dicom(tmp_path / "good.dcm", image, syntax=JPEG2000Lossless,
                       pixel_data=encapsulate([buffer.getvalue()]))
    np.testing.assert_array_equal(dicom.decode(good)[0], dicom.decode(write_dicom(tmp_path / "plain.dcm", image))[0])


def test_a_decoder_that_never_returns_is_stopped_by_the_time_limit(tmp_path, monkeypatch, deadline):
    """The second guard: without the box check, pydicom's own walk loops; the file's time limit
    stops it (an alarm in the worker) and names the file."""
    hostile = write_dicom(tmp_path / "zero-box.dcm", ramp().astype(np.uint8), syntax=JPEG2000Lossless,
                          pixel_data=encapsulate([jp2_with_a_zero_length_box(ramp().astype(np.uint8))]))
    monkeypatch.setattr(dicom, "_check_jpeg2000", lambda *args: None)
    monkeypatch.setattr(images, "FILE_SECONDS", 1)
    started = time.monotonic()
    with pytest.raises(data.DataError, match=r"zero-box.dcm took longer than 1 s to decode and was stopped"):
        images.decode([hostile], 1, 16)
    assert time.monotonic() - started < 10


def _stuck_in_c(path, *args):
    """A decoder stuck where Python's alarm cannot reach it (SIGALRM held back, as in C code)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)


def test_a_worker_stuck_past_the_alarm_is_ended_by_its_watchdog(tmp_path, monkeypatch, deadline):
    files = [write_dicom(tmp_path / f"scan{k}.dcm", ramp()) for k in range(2)]
    monkeypatch.setattr(images, "_decode_file", _stuck_in_c)  # the workers are forked: they see it
    monkeypatch.setattr(images, "FILE_SECONDS", 1)
    monkeypatch.setattr(images, "WATCHDOG_GRACE", 1)
    started = time.monotonic()
    with pytest.raises(data.DataError, match=r"scan0.dcm took longer than 1 s to decode and was stopped"):
        images.decode(files, 1, 16, workers=1)
    assert time.monotonic() - started < 15


# ----------------------------------------------------------------------------- 2. deflate bomb


def test_a_deflated_dicom_is_inflated_within_a_limit(tmp_path, monkeypatch):
    small = ramp()
    deflated = write_dicom(tmp_path / "small.dcm", small, syntax=DeflatedExplicitVRLittleEndian)
    np.testing.assert_array_equal(dicom.decode(deflated)[0], dicom.decode(write_dicom(tmp_path / "p.dcm", small))[0])
    # 16 MiB of zeros deflate to some 16 KB; with the limit at 1 MiB (800 MB inflated at the real one)
    path = dicom_pipeline(tmp_path, private=20, public=8, test=4, classes=2)
    write_dicom(tmp_path / "scans" / "test" / "class 1" / "bomb.dcm", np.zeros((2048, 4096), np.uint16),
                syntax=DeflatedExplicitVRLittleEndian)
    assert (tmp_path / "scans" / "test" / "class 1" / "bomb.dcm").stat().st_size < 100_000
    monkeypatch.setattr(dicom, "MAX_INFLATED", 1 << 20)
    one_line(partition(path, tmp_path), "bomb.dcm is refused: its deflated DICOM data inflates to more than 1 MiB")
    assert not (tmp_path / "run").exists()


def test_the_real_inflate_limit_is_below_800_mb():
    assert dicom.MAX_INFLATED < 800_000_000


# ----------------------------------------------------------------------------- 3. inferred image size


def _pipeline(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "folders.toml"
    path.write_text(FOLDERS_PIPELINE.replace('source = "folders"', f'source = "folders"\n{extra}'))
    return path


@pytest.mark.parametrize("size", [(3000, 2000), (1, 100_000)], ids=["3000-pixel photos", "1 x 100000"])
def test_an_inferred_image_size_is_capped(tmp_path, size):
    write_folders(tmp_path / "images", private=20, public=0, test=4, classes=2)
    lot = tmp_path / "images" / "public" / "lot"
    lot.mkdir(parents=True)
    for k in range(40):
        Image.new("L", size, 6 * k).save(lot / f"photo{k}.png")  # flat: a few KB whatever the size
    output = one_line(partition(_pipeline(tmp_path), tmp_path), "set image_size = N (8 to 1024")
    assert f"about {int(round(max(size) / 4)) * 4} pixels across" in output and "[data] section" in output
    assert not (tmp_path / "run").exists()
    # told the size, the same photos are taken and resized
    ds = data.load(config_mod.load(_pipeline(tmp_path, "image_size = 32")).data, tmp_path / "data-root")
    assert ds.public_x.shape[1:] == (1, 32, 32) and ds.num_pool == 40
    assert folders.MAX_INFERRED_IMAGE_SIZE == 512


# ----------------------------------------------------------------------------- 5. damaged cache


def _damage_index(root: Path, how: str) -> None:
    path = root / "cache" / cache.INDEX
    index = json.loads(path.read_text())
    if how == "not JSON":
        path.write_text("{not json")
    elif how == "a list":
        path.write_text("[1, 2]")
    elif how == "deeply nested":
        path.write_text("[" * 200_000 + "]" * 200_000)
    elif how == "entries of the wrong types":
        path.write_text(json.dumps({key: [1] if k % 3 == 0 else {**entry, "size": "big"} if k % 3 == 1 else
                                    {**entry, "sha256": 7, "width": None} for k, (key, entry) in
                                    enumerate(index.items())}))
    elif how == "entries missing keys":
        path.write_text(json.dumps({key: {"size": entry["size"], "mtime_ns": entry["mtime_ns"]}
                                    for key, entry in index.items()}))
    else:
        raise AssertionError(how)


def _damage_arrays(root: Path, how: str) -> None:
    [path] = list((root / "cache").glob("*.npz"))
    whole = path.read_bytes()
    if how == "truncated npz":
        path.write_bytes(whole[:len(whole) // 2])
    elif how == "not a zip":
        path.write_bytes(b"\x00" * 100)
    elif how == "arrays of another shape":
        buffer = io.BytesIO()
        np.savez(buffer, images=np.zeros((3, 1, 5, 5), np.uint8), converted=np.array(0))
        path.write_bytes(buffer.getvalue())
    elif how == "a huge array header":
        header = io.BytesIO()  # a header claiming 10^11 images, and no data
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (10**11, 1, 28, 28)})
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("images.npy", header.getvalue())
            archive.writestr("converted.npy", b"")
    elif how == "no images":
        buffer = io.BytesIO()
        np.savez(buffer, converted=np.array(0))
        path.write_bytes(buffer.getvalue())
    else:
        raise AssertionError(how)


DAMAGE = {"not JSON": _damage_index, "a list": _damage_index, "deeply nested": _damage_index,
          "entries of the wrong types": _damage_index, "entries missing keys": _damage_index,
          "truncated npz": _damage_arrays, "not a zip": _damage_arrays, "arrays of another shape": _damage_arrays,
          "a huge array header": _damage_arrays, "no images": _damage_arrays}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_cache_is_a_miss(tmp_path, how):
    write_folders(tmp_path / "images", private=20, public=8, test=4, classes=2)
    cfg = config_mod.load(_pipeline(tmp_path))
    first = data.load(cfg.data, tmp_path / "data-root")
    DAMAGE[how](tmp_path / "data-root", how)
    again = data.load(cfg.data, tmp_path / "data-root")
    np.testing.assert_array_equal(again.private_x, first.private_x)
    np.testing.assert_array_equal(again.public_x, first.public_x)
    assert again.files == first.files
    third = data.load(cfg.data, tmp_path / "data-root")  # the cache was rewritten whole
    np.testing.assert_array_equal(third.private_x, first.private_x)


# ----------------------------------------------------------------------------- 6. Ctrl-C


CTRL_C = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from PIL import Image
    from pate.data import images

    folder = Path(sys.argv[1])
    paths = []
    for k in range(4):
        paths.append(folder / f"img{k}.png")
        Image.new("L", (8, 8), k).save(paths[-1])

    def slow(path, *args):
        (folder / f"running-{Path(path).stem}").touch()
        time.sleep(60)

    images._decode_file = slow  # the workers are forked: they see it
    images.CHUNK = 1
    try:
        images.decode(paths, 1, 8, workers=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT as a terminal sends it")
def test_ctrl_c_stops_the_pool_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A suite started as a background job of a shell without job control runs with SIGINT ignored, and
    # a child inherits that (Python then installs no Ctrl-C handler), as it inherits a blocked SIGINT:
    # give it the default disposition, unblocked, as a terminal's foreground job has.
    process = subprocess.Popen([sys.executable, "-c", CTRL_C, str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, env=env,
                               preexec_fn=_default_sigint)
    try:
        limit = time.monotonic() + 30
        while len(list(tmp_path.glob("running-*"))) < 2:
            assert time.monotonic() < limit and process.poll() is None, process.communicate()
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert out.strip() == "interrupted" and process.returncode == 0, (out, err)
    assert err.strip() == "", err  # no worker's traceback, no parent's either
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # every worker is gone with the parent


# ----------------------------------------------------------------------------- 7. the file named


def test_an_unreadable_image_is_named_by_its_path(tmp_path):
    write_folders(tmp_path / "images", private=20, public=8, test=4, classes=2)
    bad = tmp_path / "images" / "public" / "lot 1" / "broken.png"
    bad.write_bytes(b"not an image at all" * 10)
    output = one_line(partition(_pipeline(tmp_path), tmp_path), f"{bad} is not a readable image")
    assert "object at 0x" not in output and "BytesIO" not in output
    with pytest.raises(data.DataError) as refused:
        with images.opened(io.BytesIO(b"junk"), "named.png"):
            pass
    assert str(refused.value).startswith("named.png is not a readable image") and "0x" not in str(refused.value)


def test_a_fifo_among_the_images_is_one_line(tmp_path, deadline):
    write_folders(tmp_path / "images", private=20, public=8, test=4, classes=2)
    os.mkfifo(tmp_path / "images" / "public" / "lot 1" / "pipe.png")
    one_line(partition(_pipeline(tmp_path), tmp_path), "pipe.png is a FIFO, not a regular file")


# ----------------------------------------------------------------------------- 8. rescale


@pytest.mark.parametrize("tags, tag", [
    ({"RescaleSlope": "NaN"}, "Rescale Slope (0028,1053)"),  # alone pydicom would skip it, unseen
    ({"RescaleSlope": "NaN", "RescaleIntercept": 0}, "Rescale Slope (0028,1053)"),
    ({"RescaleSlope": 1, "RescaleIntercept": "-inf"}, "Rescale Intercept (0028,1052)"),
    ({"RescaleSlope": "1e999", "RescaleIntercept": 0}, "Rescale Slope (0028,1053)"),
])
def test_a_rescale_that_is_not_finite_is_refused_naming_the_tag(tmp_path, tags, tag):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns, writing, that the values are not valid DS
        path = write_dicom(tmp_path / "scan.dcm", ramp(), **tags)
    for check in (lambda: dicom.decode(path), lambda: dicom.header(path.read_bytes(), path)):
        with pytest.raises(data.DataError) as refused:
            check()
        message = str(refused.value)
        assert message.startswith(f"{path}: its DICOM {tag} is not a finite number"), message
        said = message[len(str(path)):].lower()  # the value is never shown
        assert not any(value in said for value in ("nan", "inf ", "-inf", "1e999")), message
    rgb = write_dicom(tmp_path / "rgb.dcm", np.zeros((4, 4, 3), np.uint8), "RGB", RescaleSlope=1,
                      RescaleIntercept="0")
    assert dicom.decode(rgb)[0].shape == (4, 4, 3)
