"""The styles and the face size a configuration renders, read from the model files' headers
without loading a single weight: what the chat side needs when the models run elsewhere
(`toonify worker` processes behind a broker)."""

from __future__ import annotations

from collections.abc import Mapping

from inference.checkpoints import read_model_info
from inference.encoder_checkpoints import read_encoder_info
from inference.model_store import ModelStore
from inference.pipeline import StyleInfo
from inference.settings import ModelsSettings, StyleSettings


def face_resolution(models: ModelsSettings) -> int:
    """The FFHQ generator's resolution: the size faces are aligned to."""
    return read_model_info(ModelStore(models.dir).path(models.face)).architecture.resolution


def describe_styles(
    models: ModelsSettings, styles: Mapping[str, StyleSettings]
) -> dict[str, StyleInfo]:
    """What Toonifier.from_config would offer: a blend style's configured strengths; a pSp
    style's one rendering at its decoder's resolution (2 ** (n_styles / 2 + 1))."""
    store = ModelStore(models.dir)
    found = {}
    for name, style in styles.items():
        label = style.label or name
        if style.kind == "psp":
            n_styles = read_encoder_info(store.path(style.model)).arch.n_styles
            full = 2 ** (n_styles // 2 + 1)
            found[name] = StyleInfo(name, label, [full], full)
        else:
            found[name] = StyleInfo(name, label, list(style.strengths), style.default_strength)
    return found
