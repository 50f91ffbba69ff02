"""The package's version, on the bottom floor so the planes can name it in their manifests
(the root package is the public facade, above them). Kept equal to pyproject.toml's."""

__version__ = "0.1.0"
