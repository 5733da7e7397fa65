"""The demo zoo: generative models of Fashion-MNIST whose design choices are varied on purpose.

Families (gan, vae, diffusion) build from a design row (family, upsampling, loss, normalization,
width); `plan` reads the list of models to train, `build` trains them resumably, `evaluate` and
`quality` measure them in the SL space. See assets/zoo/README.md.
"""

from fingerprint_core.zoo.registry import (
    FAMILIES,
    build_generator,
    build_trainer,
    generator_config,
    load_generator,
    sample,
    save_generator,
    to_uint8,
)

__all__ = ["FAMILIES", "build_generator", "build_trainer", "generator_config", "load_generator", "sample",
           "save_generator", "to_uint8"]
