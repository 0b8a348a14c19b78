"""Entry points of the `lmms_eval.models` group. Import-light on purpose: lmms-eval loads every manifest at
start-up, and one that fails to import silently disables the ones after it."""

from lmms_eval.models.registry_v2 import ModelManifest

MODELS = "lmms_plugins.models"


def llava_full() -> ModelManifest:
    return ModelManifest(model_id="llava_full", simple_class_path=f"{MODELS}.LlavaFull")


def random_drop() -> ModelManifest:
    return ModelManifest(model_id="random_drop", simple_class_path=f"{MODELS}.RandomDropLlava")


def hired() -> ModelManifest:
    return ModelManifest(model_id="hired", simple_class_path=f"{MODELS}.HiredLlava")


def visionzip() -> ModelManifest:
    return ModelManifest(model_id="visionzip", simple_class_path=f"{MODELS}.VisionZipLlava")


def downsample() -> ModelManifest:
    return ModelManifest(model_id="downsample", simple_class_path=f"{MODELS}.DownsampleLlava")


def visor() -> ModelManifest:
    return ModelManifest(model_id="visor", simple_class_path="lmms_plugins.visor.VisorLlava")


def fastv() -> ModelManifest:
    return ModelManifest(model_id="fastv", simple_class_path="lmms_plugins.fastv.FastVLlava")
