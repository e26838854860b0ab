"""cyclerctl.mqtt: live publishing of a run over MQTT (docs/mqtt.md).

- `service.run_mqtt`: the task beside the engine; publishes the journal, serves commands.
- `publisher`, `outbox`: committed journal rows -> QoS 1 publishes, acknowledged watermarks, replay.
- `topics`, `payloads`, `schemas`: the topic tree, the JSON payloads and their JSON Schemas.
- `control`: commands (pause, resume, skip, stop, abort, replay, rebirth) with validation and replies.
- `client`: the only module that talks to aiomqtt; broker URLs.
- `broker.EmbeddedBroker`: a loopback amqtt broker for the demo.
- `monitor`, `commands`: `cyclerctl monitor`.
"""
