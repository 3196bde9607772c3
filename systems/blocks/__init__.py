"""The five ML-coding-round building blocks (see systems/blocks/README.md).

Import the submodules directly (``from systems.blocks.attention import MultiHeadAttention``);
this package imports nothing so that ``import systems.blocks`` stays cheap.
"""
