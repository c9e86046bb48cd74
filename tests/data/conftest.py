"""Small image folders and arrays written by the tests themselves."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..conftest import TINY_PIPELINE, edit_pipeline


def blob(label: int, rng, size: int = 28) -> np.ndarray:
    """A 28x28 grey image with one bright square per class: easy to learn, quick to decode."""
    img = rng.integers(0, 40, (size, size)).astype(np.uint8)
    r, c = (label // 5) * 12 + 4, (label % 5) * 5 + 2
    img[r:r + 4, c:c + 4] = 255
    return img


def write_folders(root: Path, private: int = 600, public: int = 300, test: int = 100, seed: int = 0,
                  classes: int = 10) -> Path:
    """private/<class>/..., public/<any>/..., test/<class>/... as PNG (names with spaces and accents)."""
    rng = np.random.default_rng(seed)
    for split, n in (("private", private), ("public", public), ("test", test)):
        for i in range(n):
            y = int(rng.integers(0, classes))
            folder = root / split / (f"classe {y} é" if split != "public" else f"lot {i % 3}")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(blob(y, rng)).save(folder / f"img_{i}.png")
    return root


FOLDERS_PIPELINE = edit_pipeline(
    textwrap.dedent(TINY_PIPELINE), ('name = "tiny"', 'name = "folders"'),
    ('dataset = "mnist"\nprivate_size = 600\nstudent_pool = 300\ntest_size = 100',
     'source = "folders"\nprivate_dir = "images/private"\npublic_dir = "images/public"\ntest_dir = "images/test"'))


@pytest.fixture
def folders(tmp_path) -> Path:
    write_folders(tmp_path / "images")
    pipeline = tmp_path / "folders.toml"
    pipeline.write_text(FOLDERS_PIPELINE)
    return pipeline
