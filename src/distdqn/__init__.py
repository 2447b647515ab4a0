"""distdqn: distributed Deep Q-Networks (Ape-X topology) on one machine or many."""

__version__ = "0.1.0"
