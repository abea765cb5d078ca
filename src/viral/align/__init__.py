"""Everything VIRAL adds to training: layer capture, alignment projectors, losses, teachers.

Code outside training (analysis, inference) uses only the names exported here, never the submodules:
the hooks that read chosen layers' image-token states (`capture_layers`, `language_model_parts`) and
the residual baseline's loader (`load_residual`), which re-attaches its hooks to a loaded model.
"""

from viral.align.capture import capture_layers, language_model_parts
from viral.align.residual import load_residual

__all__ = ["capture_layers", "language_model_parts", "load_residual"]
