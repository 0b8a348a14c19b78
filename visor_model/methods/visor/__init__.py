"""VISOR: the universal network (`modeling`), its inference runner (`runner`) and its three training stages
(`training`)."""
