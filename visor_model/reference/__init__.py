"""The offline profile: synthetic benchmarks (`tasks`), reference models of the real LLaVA classes (`models`) and
their training recipe (`recipe`)."""
