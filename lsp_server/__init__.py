"""Swiftguard: an LSP server for fast, lossless inline code completion from a local LLM."""

__version__ = "0.1.0"
