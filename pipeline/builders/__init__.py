"""One module per builder, each defining `BUILDER` (see pipeline/builder.py); registered in pipeline/registry.py."""
