"""DIAL: reproducible pipeline that trains realistic user simulators for evaluating chatbots."""

__version__ = "0.1.0"
