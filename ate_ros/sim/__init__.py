"""Simulated hardware: the RealMan controller emulator the sim bringup and the tests drive."""
