"""C emission for a lowered graph."""
from .generation import emit_generation_project
from .project import emit_project

__all__ = ["emit_generation_project", "emit_project"]
