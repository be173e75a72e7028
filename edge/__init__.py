"""shelfscout's on-device service: camera → int8 model → tracked gaps → durable MQTT alerts.

Nothing under this package imports TensorFlow or training code.
"""

__version__ = "0.1.0"
