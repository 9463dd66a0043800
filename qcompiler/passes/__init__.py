"""Relax passes that turn a QDQ graph into integer kernels."""
from .legalize_uint8 import legalize_activations_to_uint8
from .lower_qdq import lower_qdq_to_integer
from .vector_erf import vectorizable_erf

__all__ = ["legalize_activations_to_uint8", "lower_qdq_to_integer", "vectorizable_erf"]
