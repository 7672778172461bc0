"""`evc infer`: inference jobs spread across the nodes that run a model."""
