"""Model backends behind small Protocols. Backends never import stages."""

from tracefactory.backends.base import Completion, Teacher, make_teacher

__all__ = ["Completion", "Teacher", "make_teacher"]
