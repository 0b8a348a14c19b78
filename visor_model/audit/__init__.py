"""From result records to verdicts: tidy tables (`tables`), frontiers and paired comparisons (`analysis`), the
claims audit (`claims`). pandas and numpy only."""
