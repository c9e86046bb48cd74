"""Files pate writes, and files a user hands it, as a new user meets them.

Every file of a run directory is 0600 and every folder 0700 whatever the umask (the public export
keeps normal modes); `pate predict` / `pate.load_student` refuse a hostile, foreign or damaged
student file (ONNX, torch.export, TorchScript, safetensors) in one line before sizing anything by
it; `pate export --out` refuses a folder it must not write to (another run, the private data, the
run itself, someone's files) in one line, writing nothing.
"""
from __future__ import annotations

import json
import os
import stat
import textwrap
import warnings
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save as safetensors_save

import pate
from pate import io as pate_io
from pate.cli import main
from pate.errors import PateError
from pate.nets.models import build_model
from pate.run.outputs import PREDICT_HEADER

from .conftest import TINY_PIPELINE
from .data.conftest import FOLDERS_PIPELINE, write_folders


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_refusal(result, *fragments: str) -> None:
    """Exit 2, one line, no traceback, naming what is wrong."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` and its bytes (None for folders): to show nothing changed."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


# ----------------------------------------------------------------------------- private modes


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_every_file_of_a_run_is_0600_and_every_folder_0700_whatever_the_umask(umask, tmp_path, tiny_pipeline,
                                                                               fake_data_root):
    run_dir = tmp_path / "runs" / "tiny"
    before = os.umask(umask)
    try:
        result = invoke("run", tiny_pipeline, "--run-dir", run_dir, "--data-root", fake_data_root, "-q")
    finally:
        os.umask(before)
    assert result.exit_code == 0, result.output
    seen = {"files": 0, "folders": 1}
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    for root, dirs, files in os.walk(run_dir):
        for name in dirs:
            assert stat.S_IMODE((Path(root) / name).stat().st_mode) == 0o700, Path(root) / name
            seen["folders"] += 1
        for name in files:
            assert stat.S_IMODE((Path(root) / name).stat().st_mode) == 0o600, Path(root) / name
            seen["files"] += 1
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")}
    assert {"config.toml", "manifest.json", "partition.npz", "votes.npz", "labels.npz", "ledger.jsonl",
            "privacy.json", "metrics.json", "teachers_eval.json", ".lock"} <= names, names
    assert any(n.startswith("teachers/") for n in names) and any(n.startswith("student/") for n in names)
    assert seen["files"] >= 12 and seen["folders"] >= 3
    # The public release beside it is meant to be shared: normal modes, not the run's 0600.
    release = tmp_path / "runs" / "tiny-release"
    for path in release.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~pate_io._UMASK, path


# ----------------------------------------------------------------------------- hostile student files


class Tiny(torch.nn.Module):
    """Exports (ONNX, torch.export, TorchScript) to a valid student: (N, C, H, W) -> (N, 10) logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * 0.0 + torch.arange(10, dtype=torch.float32)


class Wrong(torch.nn.Module):
    """Answers logits of the wrong width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3] * 0.0


class Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


GOOD = {"format": "pate.student.training/1", "arch": "cnn-small", "classes": [str(d) for d in range(10)], "channels": 1,
        "image_size": 28, "mean": [0.1], "std": [0.3]}
FORMATS = ("onnx", "pt2", "ts", "safetensors")


def save_ts(path: Path, meta, module: torch.nn.Module | None = None) -> Path:
    """A TorchScript file whose ``pate.json`` holds ``meta`` (a dict, raw bytes, or None for none):
    TorchScript asked for by name, so its deprecation warning is expected here and only here."""
    extra = {} if meta is None else {"pate.json": meta if isinstance(meta, bytes) else json.dumps(meta)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        torch.jit.save(torch.jit.script(module or Tiny()), str(path), _extra_files=extra)
    return path


@pytest.fixture(scope="module")
def save_student():
    """``save(fmt, folder, meta, module=Tiny, shape=(1, 28, 28), batch="dynamic")``: a student file
    of format ``fmt`` describing itself with ``meta`` (a dict, raw bytes, or None for none); each
    module exported once per module of tests."""
    exported = {}

    def export(kind, module, shape, batch):
        key = (kind, module, shape, batch)
        if key not in exported:
            example = (torch.rand(2, *shape),)
            dims = ({0: torch.export.Dim("batch")},) if batch == "dynamic" else None
            if kind == "onnx":
                exported[key] = torch.onnx.export(module().eval(), example, dynamo=True, dynamic_shapes=dims,
                                                  input_names=["images"], verbose=False).model_proto
            else:
                exported[key] = torch.export.export(module().eval(), example, dynamic_shapes=dims)
        return exported[key]

    def save(fmt, folder: Path, meta, module=Tiny, shape=(1, 28, 28), batch="dynamic") -> Path:
        path = folder / f"student.{fmt}"
        raw = None if meta is None else meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        if fmt == "ts":
            return save_ts(path, meta, module())
        if fmt == "onnx":
            model = onnx.ModelProto()
            model.CopyFrom(export("onnx", module, shape, batch))
            if raw is not None:
                entry = model.metadata_props.add()
                entry.key, entry.value = "pate.json", raw.decode("latin-1")  # a proto string is text
            path.write_bytes(model.SerializeToString())
        elif fmt == "pt2":
            torch.export.save(export("pt2", module, shape, batch), str(path))
            if raw is not None:  # torch.export.save takes text: the raw bytes go into the archive by hand
                with zipfile.ZipFile(path, "a") as archive:
                    archive.writestr(archive.namelist()[0].split("/")[0] + "/extra/pate.json", raw)
        else:
            weights = {k: v.contiguous() for k, v in build_model("cnn-small", 1, 10, 28).state_dict().items()}
            path.write_bytes(safetensors_save(weights, None if raw is None else {"pate.json": raw.decode("latin-1")}))
        return path

    return save


def without(key):
    return {k: v for k, v in GOOD.items() if k != key}


HOSTILE = {
    "no channels": (without("channels"), "'channels'"),
    "no classes": (without("classes"), "'classes'"),
    "no image_size": (without("image_size"), "'image_size'"),
    "channels a list": ({**GOOD, "channels": [1, 3]}, "'channels'"),
    "channels a string": ({**GOOD, "channels": "1"}, "'channels'"),
    "channels a float": ({**GOOD, "channels": 1.0}, "'channels'"),
    "channels true": ({**GOOD, "channels": True}, "'channels'"),
    "100000 channels": ({**GOOD, "channels": 100000}, "'channels'"),
    "100000 x 100000 images": ({**GOOD, "image_size": 100000}, "'image_size'"),
    "image_size zero": ({**GOOD, "image_size": 0}, "'image_size'"),
    "image_size a list": ({**GOOD, "image_size": [28, 28]}, "'image_size'"),
    "classes a number": ({**GOOD, "classes": 10}, "'classes'"),
    "classes of numbers": ({**GOOD, "classes": list(range(10))}, "'classes'"),
    "no classes at all": ({**GOOD, "classes": []}, "'classes'"),
    "too many classes": ({**GOOD, "classes": ["c"] * 100_001}, "'classes'"),
    "metadata a list": ([1, 2, 3], "without pate's description"),
    "another format": ({**GOOD, "format": "other/1"}, "without pate's description"),
    "no metadata": (None, "without pate's description"),
    "not JSON": (b"{not json", "is not valid JSON"),
    "not UTF-8": (b"\xff\xfe\x00", "is not valid JSON"),
}


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "digit.png"
    Image.new("L", (28, 28), 128).save(path)
    return path


def never(*args, **kwargs):
    raise AssertionError("a student that should have been refused was used")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_predict_refuses_a_hostile_student_in_one_line(case, fmt, save_student, tmp_path, image, monkeypatch):
    meta, fragment = HOSTILE[case]
    model = save_student(fmt, tmp_path, meta)
    monkeypatch.setattr("pate.data.images.decode", never)  # nothing is sized by the bad description
    monkeypatch.setattr(torch.export, "load", never)  # a .pt2's description is read before torch loads it
    out = tmp_path / "labels.csv"
    out.write_text(PREDICT_HEADER + "\nkept\n")  # an earlier CSV of pate predict's: it may be replaced
    one_line_refusal(invoke("predict", model, image, "--out", out, "-q"), fragment)
    assert out.read_text() == PREDICT_HEADER + "\nkept\n"
    with pytest.raises(PateError, match="student|pate's"):
        pate.load_student(model)


NOT_A_STUDENT = [
    ("ts", b"not torchscript at all", "is not a TorchScript student exported by pate"),
    ("ts", b"", "is not a TorchScript student exported by pate"),
    ("ts", b"PK\x03\x04 a broken zip", "is not a TorchScript student exported by pate"),
    ("onnx", b"not onnx at all", "is not an ONNX student exported by pate"),
    ("onnx", b"", "is not an ONNX student exported by pate"),
    ("pt2", b"not a zip", "is not a torch.export program (.pt2) exported by pate"),
    ("pt2", b"", "is not a torch.export program (.pt2) exported by pate"),
    ("pt2", b"PK\x03\x04 a broken zip", "is not a torch.export program (.pt2) exported by pate"),
    ("safetensors", b"not safetensors", "is not a safetensors student exported by pate"),
    ("safetensors", b"", "is not a safetensors student exported by pate"),
]


@pytest.mark.parametrize("fmt, content, fragment", NOT_A_STUDENT)
def test_predict_refuses_a_file_that_is_not_a_student(fmt, content, fragment, tmp_path, image):
    model = tmp_path / f"student.{fmt}"
    model.write_bytes(content)
    one_line_refusal(invoke("predict", model, image), fragment)
    with pytest.raises(PateError, match="is not a"):
        pate.load_student(model)


@pytest.mark.parametrize("fmt, fragment", [("onnx", "is not an ONNX student exported by pate"),
                                           ("pt2", "is not a torch.export program (.pt2) exported by pate"),
                                           ("safetensors", "is not a safetensors student exported by pate")])
def test_predict_refuses_a_damaged_student(fmt, fragment, save_student, tmp_path, image):
    """A well-described student cut short (a download that stopped halfway)."""
    model = save_student(fmt, tmp_path, GOOD)
    whole = model.read_bytes()
    model.write_bytes(whole[:len(whole) // 2])
    one_line_refusal(invoke("predict", model, image, "-q"), fragment)


@pytest.mark.parametrize("fmt, shape, batch, fragment", [
    ("onnx", (3, 32, 32), "dynamic", "the ONNX model's input is 'images', tensor(float) (N, 3, 32, 32)"),
    ("onnx", (1, 28, 28), "fixed", "the ONNX model's input is 'images', tensor(float) (2, 1, 28, 28)"),
    ("pt2", (3, 32, 32), "dynamic", "not float32 (N, 1, 28, 28) with any N"),
    ("pt2", (1, 28, 28), "fixed", "the program has input (2, 1, 28, 28)"),
])
def test_predict_refuses_a_model_of_another_shape(fmt, shape, batch, fragment, save_student, tmp_path, image):
    """A model made by another tool (or for other images) that carries a pate description: its
    input is checked against the description before any image is decoded."""
    model = save_student(fmt, tmp_path, GOOD, shape=shape, batch=batch)
    one_line_refusal(invoke("predict", model, image, "-q"), fragment)


def test_safetensors_weights_must_fit_the_description(tmp_path, image, save_student):
    model = save_student("safetensors", tmp_path, {**GOOD, "image_size": 32})
    one_line_refusal(invoke("predict", model, image, "-q"), "its weights do not fit a cnn-small")
    model = save_student("safetensors", tmp_path, {**GOOD, "arch": "resnet-9000"})
    one_line_refusal(invoke("predict", model, image, "-q"), "'arch' must be an architecture pate builds")
    model = save_student("safetensors", tmp_path, {**GOOD, "std": [0.0]})
    one_line_refusal(invoke("predict", model, image, "-q"), "'std' must be a list of 1 finite numbers > 0")


@pytest.mark.parametrize("name", ["student.pt", "student.pt2"])
def test_predict_refuses_a_torch_save_pickle(name, tmp_path, image):
    model = tmp_path / name
    torch.save({"state": torch.zeros(3)}, model)
    one_line_refusal(invoke("predict", model, image), "is not a")


@pytest.mark.parametrize("fmt, module, fragment", [("onnx", Wrong, "not logits of shape (1, 10)"),
                                                   ("pt2", Wrong, "not logits of shape (1, 10)"),
                                                   ("ts", Wrong, "not logits of shape (1, 10)"),
                                                   ("ts", Raises, "the student failed on images of shape")])
def test_a_student_that_misbehaves_is_one_line(fmt, module, fragment, save_student, tmp_path, image):
    model = save_student(fmt, tmp_path, GOOD, module)
    one_line_refusal(invoke("predict", model, image, "-q"), fragment)


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "ts"])
def test_a_well_described_student_predicts(fmt, save_student, tmp_path, image):
    model = save_student(fmt, tmp_path, GOOD)
    result = invoke("predict", model, image, "-q")
    assert result.exit_code == 0, result.output
    confidence = torch.softmax(torch.arange(10, dtype=torch.float32), 0)[9].item()  # the constant logits'
    assert f"{image},9,9,{confidence:.4f}" in result.output.splitlines()


def loop_student(steps: int = 10**15, meta=GOOD) -> onnx.ModelProto:
    """An ONNX model with pate's description, the right input and output, and a Loop of ``steps``
    steps: the logits wait for the loop's count."""
    from onnx import TensorProto, helper

    scalar = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body", [scalar("i", TensorProto.INT64, []), scalar("cond_in", TensorProto.BOOL, []),
                 scalar("acc_in", TensorProto.FLOAT, [])],
        [scalar("cond_out", TensorProto.BOOL, []), scalar("acc_out", TensorProto.FLOAT, [])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    nodes = [helper.make_node("Loop", ["steps", "true", "zero"], ["count"], body=body),
             helper.make_node("ReduceSum", ["images", "axes"], ["sum"], keepdims=0),
             helper.make_node("Mul", ["sum", "count"], ["scaled"]),
             helper.make_node("Unsqueeze", ["scaled", "one_axis"], ["column"]),
             helper.make_node("Expand", ["column", "ten"], ["logits"])]
    graph = helper.make_graph(
        nodes, "looping", [scalar("images", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [scalar("logits", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor("steps", TensorProto.INT64, [], [steps]),
         helper.make_tensor("true", TensorProto.BOOL, [], [True]),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
         helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]),
         helper.make_tensor("ten", TensorProto.INT64, [2], [1, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    entry = model.metadata_props.add()
    entry.key, entry.value = "pate.json", json.dumps(meta)
    return model


def plain_student() -> onnx.ModelProto:
    """An ONNX model of allowed operations only (Reshape, Gemm), described as pate's."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "flat"], ["rows"]),
         helper.make_node("Gemm", ["rows", "weight", "bias"], ["logits"])],
        "plain", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor("flat", TensorProto.INT64, [2], [-1, 784]),
         helper.make_tensor("weight", TensorProto.FLOAT, [784, 10], [0.0] * 7840),
         helper.make_tensor("bias", TensorProto.FLOAT, [10], list(range(10)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    entry = model.metadata_props.add()
    entry.key, entry.value = "pate.json", json.dumps(GOOD)
    return model


def _custom_domain(model: onnx.ModelProto) -> None:
    model.graph.node[1].domain = "com.example"


def _function(model: onnx.ModelProto) -> None:
    model.functions.add().CopyFrom(onnx.helper.make_function("com.example", "Relu", ["x"], ["y"], [
        onnx.helper.make_node("Identity", ["x"], ["y"])], [onnx.helper.make_opsetid("", 20)]))


def _external(model: onnx.ModelProto) -> None:
    tensor = model.graph.initializer[1]  # weight
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "/dev/zero"


@pytest.mark.parametrize("change, fragment", [(None, "holds a 'Loop' node, which pate's exporter never writes"),
                                              (_custom_domain, "a node of the operator domain 'com.example'"),
                                              (_function, "holds a local function"),
                                              (_external, "holds a tensor stored in another file")],
                         ids=["Loop", "custom domain", "local function", "external data"])
def test_predict_refuses_an_onnx_graph_pate_never_writes(change, fragment, tmp_path, image, monkeypatch, capfd):
    """A 10^15-step Loop (would run for ever) and the other things pate's exporter never writes are
    refused from the graph itself, before onnxruntime makes a session of it."""
    model = loop_student() if change is None else plain_student()
    if change is not None:
        change(model)
    path = tmp_path / "student.onnx"
    path.write_bytes(model.SerializeToString())
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", never)
    one_line_refusal(invoke("predict", path, image, "-q"), fragment, "it is not a pate student")
    assert not capfd.readouterr().err


def test_a_student_past_its_time_limit_is_stopped(tmp_path, image, monkeypatch, capfd):
    """The second guard: were a Loop let through, onnxruntime is told to stop at the batch's time
    limit, in one line (and nothing from onnxruntime's log)."""
    from pate.export import student

    monkeypatch.setattr(student, "check_onnx_graph", lambda *args: None)  # the first guard let it through
    monkeypatch.setattr(student, "INFER_SECONDS", 0.5)
    monkeypatch.setattr(student, "INFER_SECONDS_PER_VALUE", 0.0)
    path = tmp_path / "student.onnx"
    path.write_bytes(loop_student().SerializeToString())
    one_line_refusal(invoke("predict", path, image, "-q"), "the student took longer than 0 s on images of shape "
                     "(1, 1, 28, 28) and was stopped")
    assert not capfd.readouterr().err
    path.write_bytes(loop_student(steps=3).SerializeToString())  # a short loop answers
    labels, _ = pate.load_student(path).predict(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert labels.tolist() == [0, 0]
    path.write_bytes(plain_student().SerializeToString())  # what the graph check lets through runs
    monkeypatch.undo()
    labels, _ = pate.load_student(path).predict(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert labels.tolist() == [9, 9]


# ----------------------------------------------------------------------------- export / release --out


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_data_root):
    """A finished run on image folders (so the config names a private folder), and another run."""
    root = tmp_path_factory.mktemp("hostile-export")
    write_folders(root / "images")
    (root / "folders.toml").write_text(FOLDERS_PIPELINE)
    result = invoke("run", root / "folders.toml", "--run-dir", root / "run", "--data-root", root / "data-root", "-q")
    assert result.exit_code == 0, result.output
    (root / "tiny.toml").write_text(textwrap.dedent(TINY_PIPELINE))
    other = invoke("run", root / "tiny.toml", "--run-dir", root / "other", "--data-root", fake_data_root,
                   "--until", "partition", "-q")
    assert other.exit_code == 0, other.output
    (root / "other" / "labels.npz").write_bytes(b"that run's labels")  # what an export would overwrite
    return root


def _refused(finished, command, out, *fragments):
    before = tree(finished)
    one_line_refusal(invoke(command, finished / "run", "--out", out), *fragments)
    assert tree(finished) == before  # nothing written, nothing overwritten


@pytest.mark.parametrize("command", ["export", "release"])
def test_export_refuses_another_run_directory(command, finished):
    _refused(finished, command, finished / "other", "is the pate run directory", "another run's private folder")
    _refused(finished, command, finished / "other" / "public", "is inside the pate run directory",
             "another run's private folder")


@pytest.mark.parametrize("command", ["export", "release"])
@pytest.mark.parametrize("where", ["images/private", "images/private/classe 0 é", "images/private/new",
                                   "images", "."])
def test_export_refuses_the_private_data(command, where, finished):
    _refused(finished, command, finished / where, "the run's data ([data] private_dir")


@pytest.mark.parametrize("command", ["export", "release"])
def test_export_refuses_the_run_directory_itself(command, finished):
    _refused(finished, command, finished / "run", "is the private run directory")
    _refused(finished, command, finished / "run" / "student" / "pub", "inside the private run directory")


@pytest.mark.parametrize("command", ["export", "release"])
def test_export_refuses_a_folder_of_other_files(command, finished, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "labels.csv").write_text("my own labels")
    one_line_refusal(invoke(command, finished / "run", "--out", mine), "holds files and is not a pate release")
    # Only export names, but no pate student.json: still not a previous export.
    (mine / "thesis.tex").unlink()
    one_line_refusal(invoke(command, finished / "run", "--out", mine), "not a pate release")
    (mine / "student.json").write_text(json.dumps({"format": "something else"}))
    one_line_refusal(invoke(command, finished / "run", "--out", mine), "not a pate release")
    assert (mine / "labels.csv").read_text() == "my own labels"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    one_line_refusal(invoke(command, finished / "run", "--out", a_file), "is not a folder")
    assert a_file.read_text() == "x" and set(tree(tmp_path)) == {"a-file", "mine", "mine/labels.csv",
                                                                 "mine/student.json"}  # nothing added


def test_export_refuses_a_foreign_default_folder(finished, tmp_path):
    """Without --out the folder is RUN_DIR-release: checked the same way."""
    default = finished / "run-release"  # written by `pate run`: a previous export, so reused
    assert invoke("export", finished / "run").exit_code == 0
    (default / "notes.txt").write_text("mine")
    try:
        before = tree(default)
        one_line_refusal(invoke("export", finished / "run"), "notes.txt")
        assert tree(default) == before
    finally:
        (default / "notes.txt").unlink()


def test_export_into_new_empty_or_previous_export_folders(finished, tmp_path):
    new = tmp_path / "new" / "pub"
    assert invoke("export", finished / "run", "--out", new).exit_code == 0
    files = sorted(p.name for p in new.iterdir())
    again = invoke("export", finished / "run", "--out", new)  # a previous export: rewritten in place
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in new.iterdir()) == files
    for path in new.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~pate_io._UMASK  # public: normal modes
    (new / ".labels.csv.x1y2.tmp").write_bytes(b"half")  # an export cut short by a crash
    (new / "statement.json").unlink()
    assert invoke("export", finished / "run", "--out", new).exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("release", finished / "run", "--out", empty).exit_code == 0
    assert (empty / "student.onnx").is_file() and not (empty / "student.ts").exists()


def test_predict_out_refuses_the_run_directory(finished, image):
    labels = finished / "other" / "labels.npz"
    before = labels.read_bytes()
    one_line_refusal(invoke("predict", finished / "run-release", image, "--out", labels, "-q"),
                     "is inside the pate run directory")
    assert labels.read_bytes() == before
    one_line_refusal(invoke("predict", finished / "run-release", image, "--out", finished / "run" / "x.csv", "-q"),
                     "is inside the pate run directory")
    assert not (finished / "run" / "x.csv").exists()
