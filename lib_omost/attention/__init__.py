"""Pure-torch attention: head reshapes, layer geometry, the AttentionPlan and one module per technique."""
