"""A tenant's telemetry subscriber written with paho-mqtt, as a data scientist would: prints
`TOPIC PAYLOAD` per message until killed. Exit 3 when the broker refuses the credentials.

usage: mqtt_subscriber.py HOST PORT USERNAME PASSWORD TOPIC
"""
import os
import sys

import paho.mqtt.client as mqtt


def main() -> None:
    host, port, user, password, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lw-sub-{os.getpid()}")
    client.username_pw_set(user, password)

    def on_connect(c, _userdata, _flags, reason, _props):
        if reason.is_failure:
            print(f"refused: {reason}", file=sys.stderr, flush=True)
            os._exit(3)
        c.subscribe(topic, qos=1)

    def on_message(_c, _userdata, msg):
        print(msg.topic, msg.payload.decode(), flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, port, keepalive=10)
    client.loop_forever()


if __name__ == "__main__":
    main()
