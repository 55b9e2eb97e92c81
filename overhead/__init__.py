"""Overhead: where the latency of a vision DNN service goes."""
__version__ = "0.1.0"
