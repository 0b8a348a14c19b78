"""The LLaVA input and decode path every method shares: checkpoints, the visual-token pipeline, the batched
runner, greedy decoding."""
