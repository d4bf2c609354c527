"""From the receiver's bytes to fixes: NMEA framing, sentence parsers, epochs, GPS time."""
