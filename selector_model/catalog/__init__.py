"""Model knowledge that transfers to models the selector never saw in training.

`Catalog.load()` reads the shipped `models.yaml`; `Catalog.lookup(name, details,
capabilities)` describes any model, listed or not (see `catalog.py`).
"""

from selector_model.catalog.catalog import DEFAULT_PATH, Catalog, CatalogError, Figure, Source
from selector_model.catalog.knowledge import (
    AREAS,
    SPECIALTIES,
    Measured,
    ModelKnowledge,
    ollama_capabilities,
)

__all__ = [
    "AREAS",
    "DEFAULT_PATH",
    "SPECIALTIES",
    "Catalog",
    "CatalogError",
    "Figure",
    "Measured",
    "ModelKnowledge",
    "Source",
    "ollama_capabilities",
]
