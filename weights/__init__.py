"""Shipped model weights (installed as the package data ``wsicodec.weights``)."""
