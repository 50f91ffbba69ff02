"""Dev tooling: the local services (redis-server, SeaweedFS) that tests, benchmarks and
`dualplane up` start, and the local stack itself (:mod:`.stack` runs it, :mod:`.local_stack`
keeps its state in ``.dualplane/`` and finds a running one). Above the planes, below the CLI;
nothing in the planes or below imports it."""
