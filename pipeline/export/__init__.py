"""`groundforge export`: groundforge outputs in the dataset layouts of ms-swift, maestro, LLaVA and HF/TRL.

One module per target (swift, maestro, llava, messages); images.py names and writes the image files, command.py
streams the shards and holds the click command `export_cmd`.
"""
from groundforge.pipeline.export.command import TARGETS, export_cmd, export_dataset

__all__ = ["TARGETS", "export_cmd", "export_dataset"]
