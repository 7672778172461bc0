"""`evc model`: the catalogue, builds, the registry, and deployments on the nodes."""
