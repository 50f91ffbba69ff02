"""Everything both planes share: models, graph logic, the Redis bridge, the executor, artifacts."""
