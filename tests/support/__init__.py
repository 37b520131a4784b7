"""Helpers the tests share: real servers, tiny models, fixtures."""
