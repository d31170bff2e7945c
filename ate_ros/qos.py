"""QoS profiles the nodes share beyond rclpy's presets."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

#: A state published on change and kept for late joiners (ROS 1's "latched"): reliable,
#: transient-local, the newest value only. Publisher and subscribers must both use it.
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
