"""Pipelines: data loaders, teacher/student training and distillation on Ray, KFP definitions.

Builds on governance (registry, lineage, audit); talks to serving only through the registry.
"""

__all__: list[str] = []
