"""HTTP routers: thin and typed; the work happens in sessions, pool and executor."""
