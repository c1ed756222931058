"""Static memory plan: every intermediate tensor and kernel scratch at a fixed arena offset."""
from .arena import ArenaPlan, plan_arena

__all__ = ["ArenaPlan", "plan_arena"]
