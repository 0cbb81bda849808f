"""Engines behind one Protocol (`interface.py`); `factory.create_engine` builds one.

Importing this package imports neither torch nor vLLM: code that only needs the interface's
types stays light.
"""
