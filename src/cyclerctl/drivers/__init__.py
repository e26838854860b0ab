"""cyclerctl.drivers: instrument channels and thermostats.

- registry: instrument specs -> Channel / Thermostat objects (`open_channel`, `open_thermostat`)
- keithley2450: Keithley 2450-family SMU over SCPI/pyvisa (host-stepped)
- emstat, methodscript: PalmSens EmStat4/Nexus over MethodSCRIPT/pyserial (script-running)
- espec, meerstetter: climate chamber and Peltier stage (Thermostats)
- thermostat_channel: a channel plus a thermostat, running SetTemperature steps
- scpi: the SCPI transport and the declarative `Control` property
- stepping: end conditions, record rule and blocks shared by host-side loops
- envelope: capability envelopes from drivers/*.yaml; retry: bounded backoff
- commands: `cyclerctl sim-instrument`
"""
