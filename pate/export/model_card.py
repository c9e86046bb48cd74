"""``model-card.md`` of a public release: what the student is, what it was trained on, how well it
does on held-out public images, and the privacy guarantee that covers it (Mitchell et al. 2019,
"Model Cards for Model Reporting", trimmed to what pate knows for certain).

It is written from the public statement and the run's settings only, never from the votes or
the ledger. The number of private records is left out on purpose: with add/remove neighbours the
count itself is a property of the private data.

It opens with the Hugging Face model-card metadata (YAML front matter between ``---`` lines:
license, tags, datasets, metrics and a model-index with the held-out accuracy), so that the Hub
and the tools that read model cards recognise it.
"""
from __future__ import annotations

import json

from ..data import source_of
from ..run.directory import RunDir
from ..run.artifacts import data_spec, mechanism

TAGS = ("differential-privacy", "pate", "image-classification", "pytorch")


def _yaml(value: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one; names hold no control characters)."""
    return json.dumps(value, ensure_ascii=False)


def front_matter(run: RunDir, doc: dict) -> list[str]:
    """The Hugging Face metadata block: public fields only (the settings' names, the data's public
    name, the held-out accuracy); never a license pate cannot know."""
    config, student = run.config, doc["student"]
    dataset = _yaml(config.data.public_name)
    lines = ["---",
             "# Hugging Face model-card metadata (https://huggingface.co/docs/hub/model-cards)",
             "license: other  # pate cannot know the data's or the model's license: set it before publishing",
             "pipeline_tag: image-classification",
             "tags:", *(f"- {_yaml(t)}" for t in (*TAGS, doc["privacy"]["mechanism"])),
             "datasets:", f"- {dataset}",
             "metrics:", "- accuracy"]
    if student.get("accuracy") is not None:
        size = student.get("test_size")
        lines += ["model-index:",
                  f"- name: {_yaml(f'{config.name}-student')}",
                  "  results:",
                  "  - task:", "      type: image-classification", "      name: Image classification",
                  "    dataset:", f"      name: {dataset}", f"      type: {dataset}",
                  "      split: held-out public test split",
                  "    metrics:", "    - type: accuracy", f"      value: {round(float(student['accuracy']), 4)!r}",
                  f"      name: {_yaml(f'accuracy on {size} held-out public images')}"]
    return [*lines, "---", ""]


def _private_path(config, features: str) -> str:
    """How the private records reached the student, from the settings alone."""
    mech, teachers = mechanism(config), config.teachers
    if not mech.reads_records:
        return (f"split into {teachers.count} disjoint shards, one teacher each ({features}). It reached the student "
                "only through the noisy labels below.")
    space = f"a public {teachers.features} feature space"
    if mech.individual:
        return (f"each query's private records within its public radius ({space}) voted, each until its budget was "
                "spent. It reached the student only through the noisy labels below.")
    if not mech.casts_votes:
        return ("no record voted: a DP-SGD model (ScatterNet + linear) trained on every record labelled the public "
                "images, and its probabilities on them were released. It reached the student only through them.")
    most = "at most " if config.privacy.record_budgets else ""
    sentences = [f"each record voted for {most}its {config.aggregator.knn_k} nearest public images ({space}), all "
                 "counts released at once with noise."]
    if teachers.dpsgd_noise:
        sentences.append("A DP-SGD model (ScatterNet + linear) was also trained on every record; its probabilities "
                         "on the labelled images were released with them.")
    return " ".join([*sentences, "It reached the student only through them."])


def render(run: RunDir, doc: dict, classes: list[str]) -> str:
    config, spec = run.config, data_spec(run)
    p, student = doc["privacy"], doc["student"]
    g = p["guarantee"]
    data = config.data
    source = source_of(data).description(data)
    teachers = config.teachers
    if teachers.features == "pretrained":
        features = f"a frozen pretrained {teachers.backbone} backbone shared by all teachers, one logistic head each"
    elif teachers.features != "none":
        features = f"frozen {teachers.features} public features shared by all teachers, one logistic head each"
    else:
        features = f"{teachers.arch} networks trained from scratch, one per shard"
    accuracy = (f"{100 * student['accuracy']:.2f}% on {student['test_size']} held-out labelled public images"
                if student.get("accuracy") is not None else "unknown: this data has no labelled test split")
    label_accuracy = doc.get("label_accuracy")
    release = p.get("data_dependent_release")
    claim = doc.get("spend_log")
    lines = [
        *front_matter(run, doc),
        f"# Model card: {config.name} student",
        "",
        "## The model",
        f"A {student['arch']} image classifier of {len(classes)} classes, trained by pate {doc['pate_version']} on "
        f"{doc['generated'][:10]}. Input: float32 images (N, {spec.channels}, {spec.image_size}, {spec.image_size}) "
        "with pixels in [0, 1] (the normalisation is inside `student.onnx` and `student.pt2`); "
        f"output: one logit per class.{_averaged(student)}",
        "",
        "| label | class |",
        "|---|---|",
        *(f"| {i} | {name} |" for i, name in enumerate(classes)),
        "",
        "Use it with onnxruntime (`onnxruntime.InferenceSession(\"student.onnx\")`, no torch needed), "
        "`torch.export.load(\"student.pt2\").module()`, `pate predict student.onnx IMAGES...` or "
        "`pate.load_student(\"student.onnx\")`; `student.safetensors` holds the bare network's weights "
        "(see `student.json`).",
        "",
        "## Data and training",
        f"- Source: {source}; images {spec.channels}x{spec.image_size}x{spec.image_size}.",
        f"- Private data: {_private_path(config, features)}",
        f"- Public data: {p['queries_asked']} public images were sent to the "
        f"{'private records' if mechanism(config).reads_records else 'teachers'}; {p['queries_answered']} "
        f"labels were released ({p['mechanism']}). The student learned from those labels and from the unlabelled "
        f"rest of the public pool ({student['method']}).",
        "",
        "## Accuracy",
        f"- Student: {accuracy}.",
    ]
    if label_accuracy is not None:
        lines.append(f"- Released labels: {100 * label_accuracy:.2f}% agree with the public images' true labels "
                     "(evaluation only; the true labels were never used to train).")
    lines += [
        "- Measured on held-out public images like the training pool; on data from elsewhere it can be worse.",
        "",
        "## Privacy",
        f"- Guarantee: ({g['epsilon']:.3f}, {g['delta']:g})-differential privacy for every private record, "
        f"computed from the settings alone ({g['accountant']} accountant, at most {g['queries']} queries). "
        "The student and the labels are post-processing of the release, so the guarantee covers them.",
        f"- Neighbouring datasets: {p.get('neighbouring', 'differing by one record')}: the guarantee bounds what "
        "anyone can learn about whether any one record was in the private data.",
        "- Mechanism settings: " + ", ".join(f"{k} {v}" for k, v in p["settings"].items() if v is not None) + ".",
    ]
    if release:
        lines.append(f"- Data-dependent cost released with smooth-sensitivity noise (not a guarantee): epsilon "
                     f"{release['epsilon']:.3f} at order {release['order']:g}.")
    if claim:  # what holds for every dataset; a record's composed total is PRIVATE (``release.spend_log_claim``)
        lines.append(f"- Earlier releases: {claim['statement']}")
    if p.get("seeded"):
        lines.append("- **The noise was SEEDED for reproducibility: this is not a production privacy guarantee.**")
    lines += ["- The public images are not protected: the guarantee is about the private records only.",
              "", "Full statement: `statement.txt` / `statement.json`."]
    return "\n".join(lines) + "\n"


def _averaged(student: dict) -> str:
    """The sentence saying what an averaged student averages; nothing for one network."""
    members, mirrors = student.get("members", 1), student.get("flip_average", False)
    weight = student.get("teacher_weight", 0)
    if members == 1 and not mirrors and not weight:
        return ""
    what = (f"the logits of {members} {student['arch']} networks trained on the same labels from different seeds"
            if members > 1 else "the logits of its network")
    teacher = (f", plus {weight:g} times the logits of the DP-SGD teacher (ScatterNet + linear, trained on the "
               "private records under the guarantee above, released with its probabilities)" if weight else "")
    return (f" They are the mean of {what}{', each on the image and on its left-right mirror' if mirrors else ''}"
            f"{teacher}.")
