"""Efficiency methods, one module each: `base` (the TokenReducer seam, full and random), `hired`, `visionzip`,
`prumerge`, `downsample` (a lower-resolution input), `visor/`."""
