"""The paper's toy tasks through one registry: models, data, training, run directories,
plots and the demo (J. Lin, arXiv 2510.00468)."""
