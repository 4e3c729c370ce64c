# cffi_modules is a setuptools keyword that pyproject.toml cannot express yet.
from setuptools import setup

setup(cffi_modules=["ringbuf/_build.py:ffi"])
