"""The offline rehearsal of the paper profile (config/rehearsal.yaml): random-weight checkpoints with the real
image-side geometry of the papers' checkpoints, written in the hub layout into a local HF cache
(`checkpoints`), and lmms-eval's own task definitions pointed at a few local documents in each task's real
schema (`tasks`). Scores of a rehearsal are random; only the code paths are real."""
