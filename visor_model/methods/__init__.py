"""Efficiency methods, one module each: `base` (the TokenReducer seam, full and random), `hired`, `visionzip`,
`prumerge`, `downsample` (a lower-resolution input), `fastv`, `visor/`; `registry` has one record per method (what
the rest of the project knows of it)."""
