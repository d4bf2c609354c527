"""GPS asset tracker: NMEA in, QoS 1 MQTT to AWS IoT Core out, nothing lost in between."""

__version__ = "0.1.0"
