"""What the device decides: the state machine, the reporting policy, the data budget."""
