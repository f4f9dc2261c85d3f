"""What one sample tile contributes to a kernel: Jacobian blocks (``general``) or, for layers
with a rule in ``layers.LAYER_RULES``, their inputs and output cotangents (``structured``)."""
