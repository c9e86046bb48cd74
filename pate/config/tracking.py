"""[tracking]: MLflow experiment tracking (public fields only)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .checks import _check


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking (``pate.tracking``, MLflow): public fields only. No artifact depends on
    it, so it is outside the fingerprint and may change in a run directory at any time."""
    enabled: bool = False
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else ./mlruns (a local file store); a path or a URI
    experiment: str = ""  # "" = the pipeline name

    def validate(self) -> None:
        _check("tracking", "tracking_uri", re.fullmatch(r"[^\x00-\x1f\x7f]{0,1000}", self.tracking_uri) is not None,
               "a path or URI of at most 1000 characters without control characters", self.tracking_uri)
        _check("tracking", "experiment", re.fullmatch(r"[^\x00-\x1f\x7f]{0,200}", self.experiment) is not None,
               "a name of at most 200 characters without control characters ('' = the pipeline name)",
               self.experiment)

