"""Simulated instruments that speak the real wire protocols over real transports (TCP, pseudo-terminal),
driven by the simulator's cell model: a Keithley 2450 (SCPI), a PalmSens EmStat (MethodSCRIPT) and an
Espec chamber controller. Drivers tested against them are the drivers that run on the bench."""
