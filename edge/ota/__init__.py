"""Over-the-air model updates that cannot brick a cart: signed releases, safe download, smoke test, atomic switch.

The entry point is `edge.ota.updater.Updater`. This package file imports nothing, so the smoke-test child
(`python -m edge.ota.smoke`) starts light.
"""
