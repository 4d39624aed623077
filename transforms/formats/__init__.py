"""Target formats, one module each; `transforms.codecs` is the registry built from them."""
