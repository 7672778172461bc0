"""`evc run`: run-configs: config (schema, loading), capabilities (what a step does),
execute (running one)."""
