"""The package version, kept low so that run records can name it without importing the package top."""

__version__ = "0.1.0"
