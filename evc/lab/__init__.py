"""`evc lab`: a real fleet on one machine (nodes: containers; fleet: what makes them a fleet)."""
