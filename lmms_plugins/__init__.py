"""lmms-eval plugins: model classes (registered through the `lmms_eval.models` entry-point group) and task
templates for the efficiency methods implemented in `visor_model`."""
