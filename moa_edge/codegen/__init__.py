"""C emission for a lowered graph."""
from .project import emit_project

__all__ = ["emit_project"]
