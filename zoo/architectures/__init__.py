"""Pure Keras 3 builders (Functional API only, no Lambda layers)."""
