"""ROS 2 adapters: nodes, hardware drivers and simulated hardware around ate_core."""
