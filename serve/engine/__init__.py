"""Engines behind one Protocol (`protocol.py`); `factory.create_engine` builds one.

Importing this package imports neither torch nor vLLM: code that only needs the protocol's
types stays light.
"""
