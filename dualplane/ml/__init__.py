"""The ML library: what the tasks build on, below them and above the runtime.

The model store (registry, on-disk cache, warm cache), torch's shared generator (``rng``), device
and dtype choice, the tiny model builders, pulls of real weights and the audio codec. Nothing here
knows a task, a plane or the CLI; torch is imported only inside functions, since the control plane
imports the task modules (and the registry) without it.
"""
