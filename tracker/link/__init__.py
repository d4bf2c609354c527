"""From the spool to the cloud: message codec, forwarder, MQTT session, shadow."""
