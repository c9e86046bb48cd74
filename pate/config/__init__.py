"""Pipeline configuration: TOML -> frozen dataclasses, validated before any data is touched.

Every hyperparameter that touches privacy (T, sigma1, sigma2, orders, beta grid, query count)
is fixed here, before the private data is seen. A config's fingerprint (sha256 of
its canonical JSON) ties a run directory to the exact settings it was started with.

One module per section (``data``, ``teachers``, ``aggregator``, ``privacy``, ``student``,
``tracking``), ``checks`` for how a setting is refused and its bounds, ``pipeline`` for the whole
config and its TOML; the names below are the package's API.
"""
from .checks import (MAX_TEACHERS, MAX_CLASSES, MAX_SEED, MAX_RECORDS, MAX_QUERIES, MAX_EPOCHS, MAX_STEPS, MAX_BATCH,
                     MAX_UNLABELED_RATIO, MAX_KNN_K, MAX_ORDER, MAX_ORDERS, NOISE_RANGE, NAME_PATTERN, ConfigError)
from .data import (DatasetSpec, DATASETS, SourceKeys, DICOM_FRAMES, PATH_KEYS, DATA_NAME_PATTERN, CLASS_NAME_PATTERN,
                   DataConfig, SOURCES)
from .teachers import FEATURES, NAMED_WEIGHTS, TeachersConfig
from .aggregator import CHOSEN_BETWEEN_ROUNDS, SELECTIONS, AggregatorConfig
from .privacy import PrivacyConfig
from .student import ARCHS, STUDENT_METHODS, PROPAGATION, StudentConfig
from .tracking import TrackingConfig
from .pipeline import (PipelineConfig, ADDED_LATER, DOWNSTREAM_SECTIONS, EXCLUDED_SECTIONS, differences, SECTIONS,
                       from_dict, MAX_PIPELINE_BYTES, load, to_toml)
