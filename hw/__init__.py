"""Hardware access: GPS port, power and sensors, each with real, replay and simulated backends."""
