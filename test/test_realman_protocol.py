"""The emulated controller's answers without sockets: framing, replies, completion events, push.

The same behaviours seen through RealMan's SDK over loopback are in test_realman_emulator.py.
"""

from __future__ import annotations

from ate_core.robot.models import PUSH_CYCLE_UNIT_S, RM75_B
from ate_ros.sim.arm_motion import ARM_DEVICE
from ate_ros.sim.realman_protocol import (
    ControllerProtocol,
    JsonObjectStream,
    PushConfig,
    completion_event,
)


def controller() -> ControllerProtocol:
    return ControllerProtocol(RM75_B, PushConfig(port=8089, ip="127.0.0.1"))


def test_json_stream_splits_objects_not_lines():
    stream = JsonObjectStream()
    pretty = '{\n\t"command":\t"movec",\n\t"pose_via":\t[1, 2],\n\t"note": "} {"\n}\r\n'
    out = stream.feed(b'{"command":"a"}\r\n{"command":"b"')
    assert out == [{"command": "a"}]
    out = stream.feed(b'}\r\n' + pretty.encode()[:20])
    assert out == [{"command": "b"}]
    out = stream.feed(pretty.encode()[20:] + b'junk{"command":"c"}')
    assert out[0] == {"command": "movec", "pose_via": [1, 2], "note": "} {"}
    assert isinstance(out[1], str) and "junk" in out[1]
    assert out[2] == {"command": "c"}
    assert stream.feed(b'{"command": oops}\r\n')[0].startswith("malformed JSON")


def test_pass_through_is_never_answered_even_when_malformed():
    c = controller()
    assert c.handle({"command": "movej_canfd", "joint": [0] * 7, "follow": False}, 1, 0.0) is None
    assert c.handle({"command": "movej_canfd", "joint": [0]}, 1, 0.01) is None


def test_a_malformed_request_to_a_known_command_is_refused():
    assert controller().handle({"command": "movej", "joint": "home"}, 1, 0.0) == {
        "command": "movej", "set_state": False}


def test_a_planned_move_arrives_tagged_with_the_connection_that_asked():
    c = controller()
    target = [10_000, 0, 0, 0, 0, 0, 0]
    assert c.handle({"command": "movej", "joint": target, "v": 50}, 7, 0.0)["receive_state"]
    arrivals = []
    for _ in range(2000):
        arrivals += c.step(PUSH_CYCLE_UNIT_S)
        if arrivals:
            break
    assert [(a.device, a.tag) for a in arrivals] == [(ARM_DEVICE, 7)]
    assert completion_event(arrivals[0].device)["trajectory_state"] is True
    assert c.handle({"command": "get_joint_degree"}, 7, 0.0)["joint"] == target


def test_push_drops_custom_items_once_turned_off():
    c = controller()
    assert {"arm_current_status"} <= set(c.push_packet())
    assert "joint_speed" in c.push_packet()["joint_status"]
    reply = c.handle({"command": "set_realtime_push", "custom": {
        "joint_speed": False, "arm_current_status": False, "lift_state": -1}}, 1, 0.0)
    assert reply == {"command": "set_realtime_push", "state": True}
    packet = c.push_packet()
    assert "arm_current_status" not in packet and "joint_speed" not in packet["joint_status"]
    assert c.push.custom["lift_state"] is False
