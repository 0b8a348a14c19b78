"""The report: figures, the helpers the notebooks share, and rendering notebooks to HTML."""
