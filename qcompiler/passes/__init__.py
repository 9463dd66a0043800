"""Relax passes that turn a QDQ graph into integer kernels."""
from .legalize_uint8 import legalize_activations_to_uint8
from .lookup_tables import integer_lookup_tables
from .lower_qdq import lower_qdq_to_integer
from .precise_layer_norm import precise_layer_norm
from .small_powers import small_powers
from .vector_math import vectorizable_transcendentals

__all__ = ["integer_lookup_tables", "legalize_activations_to_uint8", "lower_qdq_to_integer", "precise_layer_norm", "small_powers",
           "vectorizable_transcendentals"]
