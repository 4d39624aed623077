"""`groundforge validate` and `groundforge preview` (defined in pipeline/validate.py and pipeline/preview.py;
imported here for the CLI, which registers them from this module)."""
from groundforge.pipeline.preview import preview_cmd, preview_html, sample_rows
from groundforge.pipeline.validate import validate_cmd, validate_output

__all__ = ["preview_cmd", "preview_html", "sample_rows", "validate_cmd", "validate_output"]
